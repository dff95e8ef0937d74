"""Training telemetry for real: MLflow on a local file store and W&B offline, a resume continuing
both runs, the Prometheus gauges, and GPU fields that are absent on CPU.

Nothing here reaches the network: MLflow writes files (its telemetry off), W&B runs offline.
"""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray
import torch
from metrics_endpoint import dashboard_metric_names, scrape_cluster

from deepsynth.training.telemetry import (
    MLFLOW_CHECKPOINT_TAG,
    MLFLOW_RUN_TAG,
    TRAIN_GAUGES,
    TrainGauges,
    gpu_stats,
    tracking_env,
    tracking_run_id,
)
from ray_jobs import train

SMOKE = "ray_jobs/configs/cpu_smoke.yaml"
WANDB_HEADER = b":W&B"
LEVELDB_BLOCK = 32 * 1024
RAY_ERROR_CHANNEL = re.compile(r"^(\x1b\[\d+m)?\(raylet\)")


def wandb_records(path: Path):
    """The protobuf records of a W&B transaction log (`run-<id>.wandb`: a W&B header, then LevelDB log blocks)."""
    from wandb.proto.wandb_internal_pb2 import Record

    data = path.read_bytes()
    assert data[:4] == WANDB_HEADER, path
    pos, pending, records = 7, b"", []
    while pos + 7 <= len(data):
        if LEVELDB_BLOCK - pos % LEVELDB_BLOCK < 7:  # a block's tail too short for a header is padding
            pos += LEVELDB_BLOCK - pos % LEVELDB_BLOCK
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL, or LAST of a fragmented record
            record = Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def wandb_history(run_dir: Path) -> dict[int, dict]:
    rows = {}
    for record in wandb_records(next(run_dir.glob("run-*.wandb"))):
        if record.WhichOneof("record_type") == "history":
            row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            rows[record.history.step.num] = row
    return rows


def wandb_summary(run_dir: Path) -> dict:
    summary = {}
    for record in wandb_records(next(run_dir.glob("run-*.wandb"))):
        if record.WhichOneof("record_type") == "summary":
            for item in record.summary.update:
                summary[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return summary


@pytest.fixture
def offline_tracking(tmp_path, monkeypatch):
    """MLflow on a file store and W&B offline, both in tmp_path, with every phone-home switched off."""
    env = {
        "MLFLOW_TRACKING_URI": f"file:{tmp_path / 'mlruns'}",
        "MLFLOW_ALLOW_FILE_STORE": "true",  # MLflow 3 keeps the file store behind this switch
        "MLFLOW_EXPERIMENT_NAME": "telemetry-test",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(tmp_path),
        "WANDB_SILENT": "true",
        "WANDB_DISABLE_CODE": "true",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.mark.slow  # two runs with both trackers, about 75 s
def test_mlflow_and_wandb_record_the_run_and_a_resume_continues_both(ray_cluster, tiny_model_dir, tmp_path,
                                                                       offline_tracking):
    from mlflow.tracking import MlflowClient

    common = ["--config", SMOKE, f"storage_path={tmp_path / 'runs'}", f"model={tiny_model_dir}",
              "build_tiny_model=false", "num_workers=1", "eval_every=2", "log_every=1", "run_name=tracked"]
    first = train.main([*common, "max_steps=2"])
    resumed = train.main([*common, "max_steps=3"])
    assert first["latest_checkpoint"].endswith("step-000002")
    assert resumed["latest_checkpoint"].endswith("step-000003")
    jsonl = [json.loads(line) for line in (tmp_path / "runs" / "tracked" / "logs" / "metrics.jsonl").read_text()
             .splitlines()]
    losses = {row["step"]: row["loss"] for row in jsonl if "loss" in row}
    assert sorted(losses) == [1, 2, 3]

    # MLflow: one run, continued, with the config as params, every step's metrics and the last checkpoint.
    client = MlflowClient(offline_tracking["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("telemetry-test")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1, "the resume must continue the run, not start a second one"
    run = runs[0]
    run_id = tracking_run_id(str((tmp_path / "runs").resolve()), "tracked")
    assert run.data.tags[MLFLOW_RUN_TAG] == run_id
    assert run.data.params["lr"] == "0.003" and run.data.params["mode"] == "lora"
    assert run.data.params["run_name"] == "tracked"
    history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "loss")}
    assert history == pytest.approx(losses)
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "samples_per_s")) == [1, 2, 3]
    assert run.data.tags[MLFLOW_CHECKPOINT_TAG] == resumed["latest_checkpoint"]
    assert Path(run.data.tags[MLFLOW_CHECKPOINT_TAG], "meta.json").exists()
    assert not any(key.startswith("gpu_") for key in run.data.metrics), "no GPU fields on CPU"

    # W&B: both offline sessions are the same run id, and together hold the same per-step losses.
    run_dirs = sorted((tmp_path / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(run_dirs) == 2, list((tmp_path / "wandb").iterdir())
    steps = {}
    for run_dir in run_dirs:
        steps.update(wandb_history(run_dir))
    assert {step: row["loss"] for step, row in steps.items() if "loss" in row} == pytest.approx(losses)
    assert wandb_summary(run_dirs[-1])["latest_checkpoint"] == resumed["latest_checkpoint"]


def test_tracking_settings_reach_the_workers_but_never_their_secrets():
    environ = {"MLFLOW_TRACKING_URI": "http://mlflow:5000", "WANDB_MODE": "offline", "WANDB_PROJECT": "p",
               "DO_NOT_TRACK": "true", "WANDB_API_KEY": "k" * 40, "MLFLOW_TRACKING_TOKEN": "t" * 20,
               "MLFLOW_TRACKING_PASSWORD": "p" * 12, "HF_TOKEN": "hf_" + "a" * 30, "HOME": "/root"}
    assert tracking_env(environ) == {"MLFLOW_TRACKING_URI": "http://mlflow:5000", "WANDB_MODE": "offline",
                                     "WANDB_PROJECT": "p", "DO_NOT_TRACK": "true"}


def test_run_ids_are_stable_per_storage_and_run_name():
    assert tracking_run_id("/runs", "a") == tracking_run_id("/runs", "a")
    assert len({tracking_run_id("/runs", "a"), tracking_run_id("/runs", "b"), tracking_run_id("/other", "a")}) == 3


def test_gpu_fields_are_absent_on_cpu():
    assert gpu_stats(torch.device("cpu")) == {}


@pytest.mark.gpu
def test_gpu_fields_report_allocator_memory_and_utilisation():
    device = torch.device("cuda", 0)
    held = torch.empty(64 * 2**20, dtype=torch.uint8, device=device)
    stats = gpu_stats(device)
    assert stats["gpu_allocated_mb"] >= 64 and stats["gpu_reserved_mb"] >= stats["gpu_allocated_mb"]
    assert stats["gpu_peak_allocated_mb"] >= stats["gpu_allocated_mb"]
    assert 0 <= stats["gpu_utilization"] <= 100
    del held


@pytest.mark.slow  # a training job of its own, about 45 s
def test_json_logs_of_a_training_job(ray_cluster, tiny_model_dir, tmp_path):
    """Every line the driver writes is a JSON record; the workers' records carry run name, rank and step."""
    command = [sys.executable, "-m", "ray_jobs.train", "--config", SMOKE, f"storage_path={tmp_path}",
               f"model={tiny_model_dir}", "build_tiny_model=false", "num_workers=1", "max_steps=2", "eval_every=2",
               "log_every=1", "run_name=json-logs", "log_format=json"]
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.gcs_address}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    # Ray's driver prints the cluster's error channel (worker start-up warnings, actor deaths) as
    # plain `(raylet) ...` text, outside logging; docs/observability.md says so.
    records = [json.loads(line) for line in lines if not RAY_ERROR_CHANNEL.match(line)]  # fails on non-JSON lines
    for record in records:
        assert {"asctime", "levelname", "message", "name"} <= record.keys(), record
    ours = [r for r in records if r["name"] == "deepsynth"]
    assert ours and all(r["run_name"] == "json-logs" and r["job_id"] for r in ours), ours
    summary = json.loads(ours[-1]["message"])
    assert summary["status"] == "finished" and summary["latest_checkpoint"].endswith("step-000002")

    # The workers' JSON records are in Ray Train's worker log files (logs/train/ray-train-app-worker-*.log),
    # not copied to the driver, where Ray would prefix each line with the worker's pid.
    job_id = ours[-1]["job_id"]
    steps = []
    for path in (ray_cluster.logs_dir / "train").glob("ray-train-app-worker-*.log"):
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        steps += [r for r in records if r["job_id"] == job_id and "step" in r]
    assert sorted(r["step"] for r in steps) == [1, 2], steps
    for record in steps:
        assert record["run_name"] == "json-logs" and record["rank"] == 0 and record["world_rank"] == 0
        assert record["message"].startswith(f"step {record['step']}/2") and record["metrics"]["loss"] > 0


def test_training_gauges_reach_the_metrics_endpoint_and_cpu_workers_export_no_gpu_series(ray_cluster):
    @ray.remote(num_cpus=0)
    class Worker:
        """Stands in for a training worker: the gauges live as long as the worker process."""

        def __init__(self):
            self.gauges = TrainGauges("gauges-test", rank=1)

        def report(self, metrics):
            self.gauges.set({**metrics, **gpu_stats(torch.device("cpu"))})

    worker = Worker.remote()
    report = {"step": 7, "loss": 2.5, "val_loss": 2.75, "samples_per_s": 12.0, "tokens_per_s": 3400.0,
              "data_wait_share": 0.25, "peak_memory_mb": 812.0}
    ray.get(worker.report.remote(report))
    wanted = {TRAIN_GAUGES[key][0]: value for key, value in report.items()}
    deadline, seen = time.time() + 90, {}
    while time.time() < deadline and set(seen) != set(wanted):
        seen = {name.removeprefix("ray_"): value for name, labels, value in scrape_cluster()
                if labels.get("run") == "gauges-test" and labels.get("rank") == "1"}
        time.sleep(2)
    ray.kill(worker)
    assert seen == wanted, "the exported gauges are exactly the report's, with no GPU series on CPU"
    assert {f"ray_{name}" for name in wanted} <= dashboard_metric_names()
