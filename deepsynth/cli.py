"""The `deepsynth` command line: small offline utilities around the library.

Jobs that run on Ray (training, sweeps, evaluation) are entry scripts in `ray_jobs/`;
this command holds what a user runs on their own machine.

    deepsynth model init-tiny runs/tiny-model
"""

from __future__ import annotations

import argparse
import sys

from deepsynth import __version__


def _init_tiny(args: argparse.Namespace) -> int:
    from deepsynth.model.tiny import build_tiny_model

    out = build_tiny_model(args.out_dir, seed=args.seed, vocab_size=args.vocab_size, sam_patch_size=args.sam_patch_size)
    print(f"Wrote a tiny random-initialised DeepSeek-OCR-2 to {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deepsynth", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"deepsynth {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    model = commands.add_parser("model", help="build and inspect models").add_subparsers(dest="model_command", required=True)
    tiny = model.add_parser("init-tiny", help="build a tiny random DeepSeek-OCR-2 (real architecture) offline")
    tiny.add_argument("out_dir", help="folder to write the model, tokenizer and processor to (must not hold a model)")
    tiny.add_argument("--seed", type=int, default=0, help="seed for the weights and the tokenizer's corpus")
    tiny.add_argument("--vocab-size", type=int, default=1024, help="upper bound on the BPE vocabulary size")
    tiny.add_argument(
        "--sam-patch-size", type=int, default=32, choices=[32, 16],
        help="32: fast, 768 px global view (145 visual tokens a page); 16: the real checkpoint's sizes",
    )
    tiny.set_defaults(handler=_init_tiny)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, FileExistsError) as err:
        print(f"deepsynth: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
