"""How long the training loop waits for pages, with Ray Data rendering ahead of it.

    python -m benchmarks.input_pipeline [--model tiny|medium] [--steps 40] [--batch-size 8] [--workers 1]

Runs the real loop (`ray_jobs/train.py`'s trainer, LoRA on the tiny model or on the ~100M one
of `benchmarks.common`) on a local Ray cluster and reads, per step, how long it waited for its batch and how long it computed; the
data-wait share is their ratio. The baseline, measured in the same run, is the share the loop
would spend if it rendered and collated each batch itself, without Ray Data prefetching:
render+collate time / (that + the loop's compute time). Target: data-wait share <= 5 %.
Rendering needs CPU beside the training step: on a 2-core machine with the tiny model's 0.1 s
steps there is none to spare, which is what the tiny run shows.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import ray

from benchmarks.common import build_medium_model, report
from deepsynth.data.collate import SummaryCollator
from deepsynth.data.datasets import load_records
from deepsynth.data.render import get_layout, render_pages
from deepsynth.model.loading import load_model_and_processor
from deepsynth.model.tiny import build_tiny_model
from deepsynth.training.config import TrainConfig
from ray_jobs.train import build_trainer

WARMUP = 5


def inline_batch_seconds(model_dir: str, batch_size: int, layout: str, repeats: int = 5) -> float:
    """Median time to render and collate one batch in the loop's own process."""
    _, _, family = load_model_and_processor(model_dir)
    collate = SummaryCollator(family)
    records = load_records("builtin", "train", batch_size * repeats)
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        chunk = records[i * batch_size : (i + 1) * batch_size]
        collate([{"pages": render_pages(r["text"], get_layout(layout)), "summary": r["summary"]} for r in chunk])
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--model", choices=["tiny", "medium"], default="tiny")
    args = parser.parse_args()

    ray.init(include_dashboard=False)
    with tempfile.TemporaryDirectory() as tmp:
        if args.model == "tiny":
            model_dir = str(build_tiny_model(Path(tmp) / "tiny"))
        else:
            build_medium_model(Path(tmp))
            model_dir = str(Path(tmp) / "model")
        config = TrainConfig(
            run_name="pipeline", storage_path=tmp, model=model_dir, mode="lora", batch_size=args.batch_size,
            num_workers=args.workers, train_limit=256, val_limit=args.batch_size, max_steps=WARMUP + args.steps,
            eval_every=WARMUP + args.steps, log_every=10, precision="fp32",
        )
        build_trainer(config).fit()
        log = Path(tmp) / "pipeline" / "logs" / "metrics.jsonl"
        rows = [row for row in map(json.loads, log.read_text().splitlines()) if "loss" in row][WARMUP:]
        inline = inline_batch_seconds(model_dir, args.batch_size, config.layout)

    wait = statistics.mean(row["data_wait_s"] for row in rows)
    compute = statistics.mean(row["compute_s"] for row in rows)
    pipelined_share = wait / (wait + compute)
    inline_share = inline / (inline + compute)
    report("input_pipeline", [
        {"pipeline": "inline render + collate (baseline)", "wait_s_per_step": inline, "share": inline_share},
        {"pipeline": "Ray Data render, prefetched", "wait_s_per_step": wait, "share": pipelined_share},
    ], {"data_wait_share": pipelined_share, "baseline_share": inline_share,
        "ratio": pipelined_share / inline_share, "target_share": 0.05, "compute_s_per_step": compute,
        "model": args.model, "batch_size": args.batch_size})


if __name__ == "__main__":
    main()
