"""Fine-tune a DeepSeek-OCR-family decoder on Ray Train.

    python -m ray_jobs.train --config ray_jobs/configs/cpu_smoke.yaml [key=value ...]
    ray job submit --working-dir . -- python -m ray_jobs.train --config ray_jobs/configs/lora_ocr2.yaml

With no Ray address it starts an embedded local cluster; with RAY_ADDRESS set, or inside a Ray
job, it joins that cluster. Re-running with the same run_name and storage_path resumes from the
latest checkpoint. SIGTERM or SIGINT (Ctrl-C) makes the workers save a checkpoint at the next
step boundary and exit; a second Ctrl-C aborts at once.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path

import ray
import torch
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from deepsynth.logs import configure_logging, logger, ray_init_logging
from deepsynth.model.loading import family_class, model_type_of
from deepsynth.model.tiny import build_tiny_model
from deepsynth.training.config import TrainConfig, load_config
from deepsynth.training.control import StopSignal, stop_signal_name
from deepsynth.training.loop import train_loop_per_worker
from deepsynth.training.telemetry import tracking_env
from deepsynth.training.modes import find_lora_targets


def parse_args(argv: list[str] | None) -> tuple[str | None, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="YAML file under ray_jobs/configs/")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the config, e.g. lr=1e-4 max_steps=20")
    args = parser.parse_args(argv)
    return args.config, args.overrides


def resolve_paths(config: TrainConfig) -> TrainConfig:
    """Make local paths absolute: Ray workers may run in another working directory."""
    model = config.model
    if config.build_tiny_model or Path(model).exists():
        model = str(Path(model).resolve())
    storage = config.storage_path if "://" in config.storage_path else str(Path(config.storage_path).resolve())
    return replace(config, model=model, storage_path=storage)


def check_lora_targets(config: TrainConfig) -> None:
    """Fail before any worker starts if lora_targets match nothing (checked on a weightless model)."""
    if config.mode == "full":
        return
    family = family_class(model_type_of(config.model))
    model_config = family.model_class.config_class.from_pretrained(config.model)
    with torch.device("meta"):
        skeleton = family.model_class(model_config)
    find_lora_targets(skeleton, family, config.lora_targets)


def build_trainer(config: TrainConfig, callbacks: list | None = None) -> TorchTrainer:
    """The TorchTrainer for `config`; `callbacks` go to Ray Train (Tune passes its report callback)."""
    env = {"DS_ACCELERATOR": "cpu"} if config.strategy == "deepspeed" and not config.use_gpu else {}
    env.update(tracking_env(os.environ))  # MLflow / W&B settings of the driver, never their secrets
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config.to_dict(),
        scaling_config=ScalingConfig(
            num_workers=config.num_workers, use_gpu=config.use_gpu,
            resources_per_worker={"CPU": config.cpus_per_worker, **({"GPU": 1} if config.use_gpu else {})},
        ),
        torch_config=TorchConfig(backend="nccl" if config.use_gpu else "gloo"),
        run_config=RunConfig(
            name=config.run_name,
            storage_path=config.storage_path,
            checkpoint_config=CheckpointConfig(
                num_to_keep=config.keep_checkpoints,
                checkpoint_score_attribute="val_loss",
                checkpoint_score_order="min",
            ),
            failure_config=FailureConfig(max_failures=config.max_failures),
            worker_runtime_env={"env_vars": env},
            callbacks=callbacks,
        ),
    )


# Each Ray Data task that renders pages asks for one CPU (map_batches' default) and runs outside the
# workers' placement group, so a run whose workers hold every CPU never gets its first batch.
DATA_TASK_CPUS = 1.0


def run_cpus(config: TrainConfig) -> float:
    """Logical CPUs a training run needs at once: its workers' and one for a page-rendering task."""
    return config.num_workers * config.cpus_per_worker + DATA_TASK_CPUS


def start_ray(num_cpus: float, log_format: str = "text") -> None:
    """Join the cluster at RAY_ADDRESS, or start an embedded one with at least `num_cpus` logical CPUs,
    logging as `log_format` says.

    The embedded cluster is always a new one (`address="local"`), even when a `ray start` cluster,
    such as the demo's, runs on this machine: without an address the README promises an embedded run.
    """
    if ray.is_initialized():
        return
    logging = ray_init_logging(log_format)
    if os.environ.get("RAY_ADDRESS"):
        ray.init(**logging)
        return
    ray.init(address="local", num_cpus=max(os.cpu_count() or 1, math.ceil(num_cpus)), **logging)


def listen_for_stop(run_name: str):
    """Install SIGTERM/SIGINT handlers that ask the workers to stop; return the signal actor and the old handlers."""
    stop = StopSignal.options(name=stop_signal_name(run_name), get_if_exists=True).remote()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    def handle(signum, frame):
        logger.info(f"Received {signal.Signals(signum).name}: saving a checkpoint at the next step boundary. "
                    "Re-run the same command to resume.")
        ray.get(stop.request.remote())
        # A second Ctrl-C aborts at once.
        signal.signal(signal.SIGINT, signal.default_int_handler)

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    return stop, previous


def main(argv: list[str] | None = None) -> dict:
    config_path, overrides = parse_args(argv)
    try:
        config = resolve_paths(load_config(config_path, overrides))
        if config.build_tiny_model and not (Path(config.model) / "config.json").exists():
            build_tiny_model(config.model)
        check_lora_targets(config)
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f"train: error: {err}")

    # A second rendering task in flight keeps the prefetched batches ahead of the step.
    start_ray(run_cpus(config) + DATA_TASK_CPUS, config.log_format)
    configure_logging(config.log_format, run_name=config.run_name)
    stop, previous_handlers = listen_for_stop(config.run_name)
    try:
        result = build_trainer(config).fit()
        stopped = ray.get(stop.requested.remote())
    finally:
        for sig, handler in previous_handlers.items():
            signal.signal(sig, handler)
        ray.kill(stop)

    ranked = sorted(result.best_checkpoints, key=lambda pair: pair[1]["val_loss"])
    best = ranked[0][0].path if ranked else None
    summary = {
        "run": config.run_name,
        "status": "stopped" if stopped else "finished",
        "path": result.path,
        "latest_checkpoint": result.checkpoint.path if result.checkpoint else None,
        "best_checkpoint": best,
        "metrics": result.metrics,
    }
    logger.info(f"\nRun {config.run_name!r} {summary['status']}. Latest checkpoint: {summary['latest_checkpoint']}")
    if stopped:
        logger.info("Resume it by running the same command again.")
    logger.info(json.dumps(summary, default=str))
    return summary


if __name__ == "__main__":
    main()
