"""Metrics sinks and measurements for the training loop.

Rank 0 writes every report to `metrics.jsonl` and TensorBoard in the run's log folder, logs a
progress record (`deepsynth.logs`: text or JSON), and sends the report to MLflow and Weights &
Biases when they are installed (`pip install -e .[tracking]`) and configured through their usual
environment variables (`MLFLOW_TRACKING_URI`; `WANDB_API_KEY` or `WANDB_MODE`). Neither is ever
required. Both continue the same run when a run resumes: the MLflow run is found by its
`deepsynth.run_id` tag, and the W&B run id is derived from the storage path and run name. Every
rank exports gauges (step, loss, throughput, data-wait share, GPU memory) through Ray's metrics
agent, so Prometheus scrapes them with Ray's own metrics (docs/observability.md).

GPU fields (`gpu_allocated_mb`, `gpu_reserved_mb`, `gpu_peak_allocated_mb`, `gpu_utilization`)
are absent, not zero, on CPU.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import resource
import sys
import time
from pathlib import Path

import torch
from ray.util import metrics as ray_metrics

from deepsynth.data.prepared import filesystem
from deepsynth.jobs.secrets import SECRET_NAME
from deepsynth.logs import logger

MLFLOW_RUN_TAG = "deepsynth.run_id"
MLFLOW_CHECKPOINT_TAG = "deepsynth.latest_checkpoint"
DEFAULT_PROJECT = "deepsynth"
# Report keys exported as Prometheus gauges (Ray prefixes each name with `ray_`).
TRAIN_GAUGES = {
    "step": ("deepsynth_train_step", "The last optimizer step."),
    "loss": ("deepsynth_train_loss", "Training loss of the last step."),
    "val_loss": ("deepsynth_train_val_loss", "The last validation loss."),
    "samples_per_s": ("deepsynth_train_samples_per_s", "Documents per second, all workers."),
    "tokens_per_s": ("deepsynth_train_tokens_per_s", "Tokens per second, all workers."),
    "data_wait_share": ("deepsynth_train_data_wait_share", "Share of step time spent waiting for batches."),
    "peak_memory_mb": ("deepsynth_train_peak_memory_mb", "Peak memory of the worker (CUDA allocator, or RSS on CPU)."),
    "gpu_allocated_mb": ("deepsynth_train_gpu_allocated_mb", "CUDA memory allocated by tensors."),
    "gpu_reserved_mb": ("deepsynth_train_gpu_reserved_mb", "CUDA memory reserved by the caching allocator."),
    "gpu_peak_allocated_mb": ("deepsynth_train_gpu_peak_allocated_mb", "Peak CUDA memory allocated."),
    "gpu_utilization": ("deepsynth_train_gpu_utilization", "Percent of time a kernel ran on the GPU (NVML)."),
}


def peak_memory_mb(device: torch.device) -> float:
    """CUDA max allocated on GPU; the process's peak resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    status = Path("/proc/self/status")
    if status.exists():
        # Linux: VmHWM, not getrusage's ru_maxrss, which a process started by a large parent
        # inherits across exec, and which /proc/self/clear_refs cannot reset.
        line = next(line for line in status.read_text().splitlines() if line.startswith("VmHWM:"))
        return int(line.split()[1]) / 2**10
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def gpu_stats(device: torch.device) -> dict[str, float]:
    """Allocated, reserved and peak CUDA memory (MB) and NVML utilisation (%); empty on CPU.

    Utilisation needs NVML (`nvidia-ml-py`, which torch.cuda.utilization reads); where NVML is
    missing or refuses (some containers), that one field is left out rather than reported as 0.
    """
    if device.type != "cuda":
        return {}
    stats = {
        "gpu_allocated_mb": torch.cuda.memory_allocated(device) / 2**20,
        "gpu_reserved_mb": torch.cuda.memory_reserved(device) / 2**20,
        "gpu_peak_allocated_mb": torch.cuda.max_memory_allocated(device) / 2**20,
    }
    try:
        stats["gpu_utilization"] = float(torch.cuda.utilization(device))
    except (ModuleNotFoundError, RuntimeError, OSError) as err:
        logger.debug("GPU utilisation unavailable: %s", err)
    return stats


def tracking_env(environ: dict[str, str]) -> dict[str, str]:
    """The MLflow and W&B settings to pass from the driver to the workers: never a secret-named one
    (WANDB_API_KEY, MLFLOW_TRACKING_TOKEN...), which would show in the job's runtime_env; the
    workers read those from their node's environment."""
    return {name: value for name, value in environ.items()
            if (name.startswith(("MLFLOW_", "WANDB_")) or name == "DO_NOT_TRACK") and not SECRET_NAME.search(name)}


def tracking_run_id(storage_path: str, run_name: str) -> str:
    """A stable id for a run: the same storage path and run name (a resume) give the same id."""
    return hashlib.sha256(f"{storage_path}\0{run_name}".encode()).hexdigest()[:16]


MIRROR_EVERY_S = 5.0


class MetricsLog:
    """Rank 0's sinks: metrics.jsonl, TensorBoard, progress log records, and MLflow / W&B when configured."""

    def __init__(self, log_dir: Path, run_name: str, config: dict, mirror: str | None = None):
        """`mirror`: where metrics.jsonl goes in cloud storage (through pyarrow, as Ray Train writes the run),
        copied there at most every MIRROR_EVERY_S seconds and at each checkpoint; None when `log_dir` is
        in the run folder already."""
        log_dir.mkdir(parents=True, exist_ok=True)
        self.run_name = run_name
        self.local = log_dir / "metrics.jsonl"
        self.mirror, self.mirrored_at = mirror, 0.0
        if mirror:
            # A resumed run on another machine continues the log that storage holds.
            fs, path = filesystem(mirror)
            try:
                with fs.open_input_stream(path) as f:
                    self.local.write_bytes(f.read())
            except FileNotFoundError:
                self.local.write_bytes(b"")
        self.jsonl = self.local.open("a")
        from torch.utils.tensorboard import SummaryWriter

        self.tensorboard = SummaryWriter(str(log_dir / "tensorboard"))
        run_id = tracking_run_id(config.get("storage_path", ""), run_name)
        self.mlflow = self.wandb = None
        if os.environ.get("MLFLOW_TRACKING_URI") and importlib.util.find_spec("mlflow"):
            self.mlflow = start_mlflow_run(run_name, run_id, config)
        if (os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE")) and importlib.util.find_spec("wandb"):
            import wandb

            # resume="allow": continue the run with this id if it exists, else start it.
            self.wandb = wandb.init(project=os.environ.get("WANDB_PROJECT", DEFAULT_PROJECT), name=run_name,
                                    id=run_id, config=config, resume="allow")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
        self.jsonl.flush()
        if self.mirror and time.monotonic() - self.mirrored_at >= MIRROR_EVERY_S:
            self.sync()
        for key, value in metrics.items():
            self.tensorboard.add_scalar(key, value, step)
        if self.mlflow:
            self.mlflow.log_metrics(metrics, step=step)
        if self.wandb:
            self.wandb.log(metrics, step=step)

    def progress(self, step: int, max_steps: int, metrics: dict[str, float]) -> None:
        """One human-readable progress record; in JSON logs its fields are the step's metrics."""
        logger.info(f"step {step}/{max_steps}  loss {metrics['loss']:.4f}  val_loss {metrics['val_loss']:.4f}  "
                    f"lr {metrics['lr']:.2e}  data wait {metrics['data_wait_share']:.0%}",
                    extra={"run_name": self.run_name, "step": step,
                           "metrics": {k: v for k, v in metrics.items() if k != "step"}})

    def checkpoint(self, path: str) -> None:
        """Record the latest checkpoint's path with the run (an MLflow tag, the W&B summary)."""
        if self.mlflow:
            self.mlflow.set_tag(MLFLOW_CHECKPOINT_TAG, path)
        if self.wandb:
            self.wandb.summary["latest_checkpoint"] = path
        self.sync()

    def sync(self) -> None:
        """Copy metrics.jsonl to its place in cloud storage (a whole-object write: object stores cannot append)."""
        if not self.mirror:
            return
        fs, path = filesystem(self.mirror)
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)  # a no-op on object stores
        with fs.open_output_stream(path) as f:
            f.write(self.local.read_bytes())
        self.mirrored_at = time.monotonic()

    def close(self) -> None:
        self.jsonl.close()
        self.sync()
        self.tensorboard.close()
        if self.mlflow:
            self.mlflow.end_run()
        if self.wandb:
            self.wandb.finish()


def start_mlflow_run(run_name: str, run_id: str, config: dict):
    """Start, or resume, the MLflow run tagged with `run_id`, in experiment $MLFLOW_EXPERIMENT_NAME or deepsynth."""
    import mlflow

    experiment = mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", DEFAULT_PROJECT))
    found = mlflow.search_runs([experiment.experiment_id], filter_string=f"tags.`{MLFLOW_RUN_TAG}` = '{run_id}'",
                               output_format="list", max_results=1)
    if found:
        mlflow.start_run(run_id=found[0].info.run_id)
    else:
        mlflow.start_run(run_name=run_name, tags={MLFLOW_RUN_TAG: run_id})
        mlflow.log_params({k: v for k, v in config.items() if not isinstance(v, (list, dict))})
    return mlflow


class TrainGauges:
    """This worker's report as Prometheus gauges, tagged with the run and the worker's rank."""

    def __init__(self, run_name: str, rank: int):
        self.tags = {"run": run_name, "rank": str(rank)}
        self.gauges = {key: ray_metrics.Gauge(name, description, tag_keys=("run", "rank"))
                       for key, (name, description) in TRAIN_GAUGES.items()}

    def set(self, metrics: dict[str, float]) -> None:
        for key, gauge in self.gauges.items():
            if metrics.get(key) is not None:
                gauge.set(float(metrics[key]), tags=self.tags)


def checkpoint_uri(storage_path: str, run_name: str, dir_name: str) -> str:
    """Where Ray Train persists a checkpoint reported with `checkpoint_dir_name=dir_name`."""
    if "://" in storage_path:
        return f"{storage_path.rstrip('/')}/{run_name}/{dir_name}"
    return str(Path(storage_path) / run_name / dir_name)
