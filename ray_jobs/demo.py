"""The demo behind `make demo`: the whole path on embedded defaults, on one machine.

It builds the tiny offline DeepSeek-OCR-2 (once), renders built-in corpus documents to page
images with Ray Data, collates a batch through the model's processor and runs a forward pass,
printing the loss and each document's compression (text tokens vs visual tokens).

    python -m ray_jobs.demo                      # starts an embedded Ray cluster
    RAY_ADDRESS=auto python -m ray_jobs.demo     # joins a running one
    ray job submit --working-dir . -- python -m ray_jobs.demo
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import ray
import torch

from deepsynth.data.collate import SummaryCollator
from deepsynth.data.compression import compression_stats
from deepsynth.data.datasets import load_records
from deepsynth.data.pages import decode_pages, render_batch
from deepsynth.data.render import get_layout
from deepsynth.model.loading import load_model_and_processor
from deepsynth.model.tiny import build_tiny_model


@dataclass
class DemoConfig:
    out_dir: str = ".deepsynth"
    """Where the tiny model is built (under tiny-model/, where the CPU smoke training config expects it)."""
    num_documents: int = 8
    """Built-in corpus documents to render and run."""
    layout: str = "ocr2-page"
    """Page layout to render with (see deepsynth.data.render.LAYOUTS)."""

    def __post_init__(self) -> None:
        if not 1 <= self.num_documents <= 256:
            raise ValueError(f"--num-documents must be in [1, 256], got {self.num_documents}.")
        get_layout(self.layout)


def parse_args(argv: list[str] | None = None) -> DemoConfig:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    defaults = DemoConfig()
    parser.add_argument("--out-dir", default=defaults.out_dir)
    parser.add_argument("--num-documents", type=int, default=defaults.num_documents)
    parser.add_argument("--layout", default=defaults.layout)
    args = parser.parse_args(argv)
    return DemoConfig(out_dir=args.out_dir, num_documents=args.num_documents, layout=args.layout)


def main(argv: list[str] | None = None) -> dict:
    config = parse_args(argv)
    model_dir = Path(config.out_dir) / "tiny-model"
    if not (model_dir / "config.json").exists():
        build_tiny_model(model_dir)
        print(f"Built the tiny model in {model_dir}")
    model, _, family = load_model_and_processor(str(model_dir))

    ray.init(ignore_reinit_error=True)
    records = load_records("builtin", "train", limit=config.num_documents)
    rendered = (
        ray.data.from_items(records)
        .map_batches(render_batch, fn_kwargs={"layout": config.layout}, batch_size=4)
        .take_all()
    )
    examples = [{"pages": decode_pages(row["pages"]), "summary": row["summary"]} for row in rendered]

    print(f"\n{'document':<14} {'pages':>5} {'text tokens':>12} {'visual tokens':>14} {'ratio':>6}")
    for row, example in zip(rendered, examples):
        stats = compression_stats(row["text"], example["pages"], family)
        print(f"{row['id']:<14} {stats.pages:>5} {stats.text_tokens:>12} {stats.visual_tokens:>14} {stats.ratio:>6.2f}")

    batch = SummaryCollator(family)(examples)
    with torch.no_grad():
        loss = model(**batch.inputs).loss.item()
    if not math.isfinite(loss):
        raise RuntimeError(f"The forward pass gave a non-finite loss ({loss}); the model folder may be corrupt.")
    result = {
        "loss": loss,
        "documents": len(examples),
        "visual_tokens": batch.num_visual_tokens,
        "model_dir": str(model_dir),
        "config": asdict(config),
    }
    print(f"\nForward pass on {len(examples)} documents: loss {loss:.4f} (untrained model).")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
