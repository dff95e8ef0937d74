"""Step time of DeepSynth's training loop divided by a bare PyTorch loop's, same model and batches.

    python -m benchmarks.train_overhead [--steps 12] [--batch-size 2]

Our loop runs under Ray Train's local mode (num_workers=0, in this process) on the ~100M-parameter
DeepSeek-OCR-2 of `benchmarks.common`, full decoder fine-tune, reporting to Ray Train every 10
steps as the shipped configs do (rank 0 writes every step to metrics.jsonl and TensorBoard). A
model of some size matters: Ray Train takes a report at most every 2 s, so on the tiny model's
60 ms steps the loop would measure Ray's reporting cadence rather than its own cost. Its step time is the wall time between consecutive
metric rows (everything the loop does: forward, backward, step, all-reduces, stop polling,
logging, reporting) minus the time it waited for Ray Data. The bare loop runs forward, backward
and an AdamW step on pre-collated batches of the same documents; it runs before and after ours
and the two are averaged, since this machine's speed drifts. Target: ratio <= 1.05.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import ray
import torch
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from benchmarks.common import build_medium_model, report
from deepsynth.data.collate import SummaryCollator
from deepsynth.data.datasets import load_records
from deepsynth.data.render import get_layout, render_pages
from deepsynth.model.inputs import placement, to_model
from deepsynth.training.config import TrainConfig
from deepsynth.training.loop import train_loop_per_worker
from deepsynth.training.modes import load_for_training, prepare_trainable

WARMUP = 3


def bare_step_times(model_dir: str, config: TrainConfig, steps: int) -> list[float]:
    model, _, family = load_for_training(model_dir, "full", dtype="float32", device="cpu")
    model, _ = prepare_trainable(model, family, "full")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr)
    records = load_records("builtin", "train", config.batch_size * 4, seed=config.seed)
    collate = SummaryCollator(family, max_length=config.max_length)
    examples = [{"pages": render_pages(r["text"], get_layout(config.layout)), "summary": r["summary"]} for r in records]
    batches = [collate(examples[i : i + config.batch_size]) for i in range(0, len(examples), config.batch_size)]
    model.train()
    times = []
    for step in range(WARMUP + steps):
        start = time.perf_counter()
        loss = model(**to_model(batches[step % len(batches)].inputs, *placement(model))).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()
        times.append(time.perf_counter() - start)
    return times[WARMUP:]


def loop_step_times(config: TrainConfig) -> list[float]:
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config.to_dict(),
        scaling_config=ScalingConfig(num_workers=0),  # local mode: the loop runs in this process
        run_config=RunConfig(name=config.run_name, storage_path=config.storage_path),
    )
    trainer.fit()
    log = Path(config.storage_path) / config.run_name / "logs" / "metrics.jsonl"
    rows = [row for row in map(json.loads, log.read_text().splitlines()) if "loss" in row]
    # Skip warm-up, and the last step, which also evaluates and checkpoints.
    return [b["time"] - a["time"] - b["data_wait_s"] for a, b in zip(rows[WARMUP:-2], rows[WARMUP + 1 : -1])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=2)
    args = parser.parse_args()

    ray.init(num_cpus=4, include_dashboard=False)
    with tempfile.TemporaryDirectory() as tmp:
        build_medium_model(Path(tmp))
        model_dir = str(Path(tmp) / "model")
        config = TrainConfig(
            run_name="overhead", storage_path=tmp, model=model_dir, mode="full", batch_size=args.batch_size,
            train_limit=args.batch_size * 4, val_limit=args.batch_size, lr=1e-3, warmup_steps=1,
            max_steps=WARMUP + args.steps + 2, eval_every=WARMUP + args.steps + 2, log_every=10, precision="fp32", max_length=4096,
        )
        bare_before = bare_step_times(model_dir, config, args.steps)
        ours = loop_step_times(config)
        bare_after = bare_step_times(model_dir, config, args.steps)

    bare = (statistics.median(bare_before) + statistics.median(bare_after)) / 2
    loop = statistics.median(ours)
    rows = [
        {"loop": "bare PyTorch (before)", "median_step_s": statistics.median(bare_before), "steps": len(bare_before)},
        {"loop": "DeepSynth (Ray Train local mode)", "median_step_s": loop, "steps": len(ours)},
        {"loop": "bare PyTorch (after)", "median_step_s": statistics.median(bare_after), "steps": len(bare_after)},
    ]
    report("train_overhead", rows, {"ratio": loop / bare, "target": 1.05, "batch_size": args.batch_size})


if __name__ == "__main__":
    main()
