"""The `deepsynth` command line: small offline utilities around the library.

Jobs that run on Ray (training, sweeps, evaluation) are entry scripts in `ray_jobs/`;
this command holds what a user runs on their own machine.

    deepsynth model init-tiny runs/tiny-model
    deepsynth export runs/x/step-000500 --out exports/x [--merge] [--push-to-hub me/repo]
    deepsynth export runs/x/step-000500 --format original exports/x-vllm     # the layout vLLM serves
    deepsynth eval --checkpoint runs/x/step-000500 --benchmark xsum --limit 500
    deepsynth config-reference --out docs/configuration.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from huggingface_hub.errors import HfHubHTTPError

from deepsynth import __version__


def _init_tiny(args: argparse.Namespace) -> int:
    from deepsynth.model.tiny import build_tiny_model, build_tiny_v1_model

    if args.family == "deepseek-ocr":
        out = build_tiny_v1_model(args.out_dir, seed=args.seed, vocab_size=args.vocab_size, dtype=args.dtype)
        print(f"Wrote a tiny random-initialised DeepSeek-OCR v1 to {out}")
        return 0
    out = build_tiny_model(args.out_dir, seed=args.seed, vocab_size=args.vocab_size, sam_patch_size=args.sam_patch_size,
                           dtype=args.dtype)
    print(f"Wrote a tiny random-initialised DeepSeek-OCR-2 to {out}")
    return 0


def _init_full_width(args: argparse.Namespace) -> int:
    from deepsynth.model.tiny import build_full_width_model

    out = build_full_width_model(args.out_dir, num_layers=args.layers, seed=args.seed)
    print(f"Wrote a {args.layers}-layer full-width random-initialised DeepSeek-OCR-2 to {out}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from deepsynth.export import export_checkpoint, export_original, push_to_hub, read_export_info

    if (args.out is None) == (args.out_dir is None):
        raise ValueError("Name the output folder once: as the last argument or with --out.")
    target = args.out or args.out_dir
    if args.format == "original":
        out = export_original(args.checkpoint, target, adapter=not args.no_adapter)
        info = read_export_info(out)
        print(f"Exported {args.checkpoint} ({info['kind']}) in the {info['layout']} layout to {out}"
              + (" with a vLLM LoRA adapter in adapter/" if info["adapter"] else ""))
        if info["vllm_incompatibilities"]:
            print("vLLM cannot run this export: " + "; ".join(info["vllm_incompatibilities"]), file=sys.stderr)
    else:
        out = export_checkpoint(args.checkpoint, target, merge=args.merge)
        print(f"Exported {'a merged model' if args.merge else 'the checkpoint'} with a model card to {out}")
    if args.push_to_hub:
        url = push_to_hub(out, args.push_to_hub, private=not args.public)
        print(f"Pushed to {url}")
    return 0


def _config_reference(args: argparse.Namespace) -> int:
    from deepsynth.training.config_reference import config_reference

    text = config_reference()
    if args.out:
        Path(args.out).write_text(text)
        print(f"Wrote the configuration reference to {args.out}")
    else:
        print(text, end="")
    return 0


def _eval(arguments: list[str]) -> int:
    from ray_jobs.evaluate import main as evaluate

    evaluate(arguments)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deepsynth", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"deepsynth {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    model = commands.add_parser("model", help="build and inspect models").add_subparsers(dest="model_command", required=True)
    tiny = model.add_parser("init-tiny", help="build a tiny random DeepSeek-OCR-2 or v1 (real architecture) offline")
    tiny.add_argument("out_dir", help="folder to write the model, tokenizer and processor to (must not hold a model)")
    tiny.add_argument("--family", default="deepseek-ocr-2", choices=["deepseek-ocr-2", "deepseek-ocr"],
                      help="deepseek-ocr-2 (default) or deepseek-ocr (v1, weights in the published layout)")
    tiny.add_argument("--seed", type=int, default=0, help="seed for the weights and the tokenizer's corpus")
    tiny.add_argument("--vocab-size", type=int, default=1024, help="upper bound on the BPE vocabulary size")
    tiny.add_argument(
        "--sam-patch-size", type=int, default=32, choices=[32, 16],
        help="OCR-2 only. 32: fast, 768 px global view (145 visual tokens a page); 16: the real checkpoint's sizes",
    )
    tiny.add_argument(
        "--dtype", default="bfloat16", choices=["bfloat16", "float32"],
        help="dtype the weights are stored in; bfloat16, like the published checkpoint (dtype=auto then loads bf16)",
    )
    tiny.set_defaults(handler=_init_tiny)
    wide = model.add_parser("init-full-width", help="build the published DeepSeek-OCR-2's widths with few decoder "
                                                    "layers and random weights (memory and speed checks on a CPU)")
    wide.add_argument("out_dir", help="folder to write the model, tokenizer and processor to (must not hold a model)")
    wide.add_argument("--layers", type=int, default=3, help="decoder layers (the published model has 12)")
    wide.add_argument("--seed", type=int, default=0, help="seed for the weights and the tokenizer's corpus")
    wide.set_defaults(handler=_init_full_width)

    export = commands.add_parser("export", help="export a checkpoint as a PEFT adapter or merged model, with a model "
                                                "card, or in the original layout vLLM serves")
    export.add_argument("checkpoint", help="a step-XXXXXX folder written by ray_jobs.train (with --format original "
                                           "also a model folder or hub id)")
    export.add_argument("out_dir", nargs="?", help="an empty or new folder (or give it with --out)")
    export.add_argument("--out", help="an empty or new folder")
    export.add_argument("--format", choices=["hf", "original"], default="hf",
                        help="hf: transformers/PEFT folder; original: the deepseek-ai layout vLLM serves (merged "
                             "weights, plus adapter/ in the original module names for a LoRA checkpoint)")
    export.add_argument("--no-adapter", action="store_true",
                        help="with --format original: write only the merged weights, no vLLM adapter")
    export.add_argument("--merge", action="store_true", help="fold a LoRA adapter into the base weights")
    export.add_argument("--push-to-hub", metavar="REPO", help="upload to this Hub repo with HF_TOKEN")
    export.add_argument("--public", action="store_true", help="create the Hub repo public (default: private)")
    export.set_defaults(handler=_export)

    reference = commands.add_parser("config-reference", help="the TrainConfig reference as Markdown (docs/configuration.md)")
    reference.add_argument("--out", help="write to this file instead of printing")
    reference.set_defaults(handler=_config_reference)

    # Listed for --help; main() hands everything after "eval" to ray_jobs.evaluate, which parses it.
    commands.add_parser("eval", help="evaluate a checkpoint or model (the arguments of python -m ray_jobs.evaluate)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["eval"]:
        return _eval(argv[1:])
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse fills positionals from the first run of them only, so in `export CK --format original OUT`
    # OUT arrives as an extra argument.
    if args.command == "export" and args.out_dir is None and len(extra) == 1 and not extra[0].startswith("-"):
        args.out_dir, extra = extra[0], []
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.handler(args)
    except (ValueError, FileExistsError, FileNotFoundError) as err:
        print(f"deepsynth: error: {err}", file=sys.stderr)
        return 2
    except HfHubHTTPError as err:
        # The Hub's message names the URL and the reason; it never carries the token.
        print(f"deepsynth: the Hub refused the request: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
