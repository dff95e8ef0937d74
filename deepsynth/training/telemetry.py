"""Metrics sinks and measurements for the training loop.

Rank 0 writes every report to `metrics.jsonl` and TensorBoard in the run's log folder; MLflow
and Weights & Biases receive them too when they are installed and configured through their
usual environment variables (`MLFLOW_TRACKING_URI`, `WANDB_API_KEY` or `WANDB_MODE`). Neither
is ever required.
"""

from __future__ import annotations

import importlib.util
import json
import os
import resource
import sys
from pathlib import Path

import torch


def peak_memory_mb(device: torch.device) -> float:
    """CUDA max allocated on GPU; the process's peak resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


class MetricsLog:
    def __init__(self, log_dir: Path, run_name: str, config: dict):
        log_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = (log_dir / "metrics.jsonl").open("a")
        from torch.utils.tensorboard import SummaryWriter

        self.tensorboard = SummaryWriter(str(log_dir / "tensorboard"))
        self.mlflow = self.wandb = None
        if os.environ.get("MLFLOW_TRACKING_URI") and importlib.util.find_spec("mlflow"):
            import mlflow

            mlflow.set_experiment(run_name)
            mlflow.start_run(run_name=run_name)
            mlflow.log_params({k: v for k, v in config.items() if not isinstance(v, (list, dict))})
            self.mlflow = mlflow
        if (os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE")) and importlib.util.find_spec("wandb"):
            import wandb

            wandb.init(project="deepsynth", name=run_name, config=config, resume="allow")
            self.wandb = wandb

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
        self.jsonl.flush()
        for key, value in metrics.items():
            self.tensorboard.add_scalar(key, value, step)
        if self.mlflow:
            self.mlflow.log_metrics(metrics, step=step)
        if self.wandb:
            self.wandb.log(metrics, step=step)

    def close(self) -> None:
        self.jsonl.close()
        self.tensorboard.close()
        if self.mlflow:
            self.mlflow.end_run()
        if self.wandb:
            self.wandb.finish()
