"""Checkpoints are complete or invisible: a training process killed (SIGKILL) at random points, 20 times.

Each kill takes down the whole embedded Ray cluster of `ray_jobs.train` (driver, raylet, GCS,
workers: every process under the driver) while it checkpoints every step, as a machine that loses power would. After each kill, every
checkpoint `list_checkpoints` shows must load, and the next run must resume from Ray Train's latest
registered checkpoint. The run that finally finishes must equal an uninterrupted run bit for bit.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from deepsynth.jobs.progress import list_checkpoints, resume_step
from deepsynth.training.checkpoint import load_checkpoint
from ray_jobs import train

pytestmark = pytest.mark.slow  # 20 embedded clusters started and killed: about 15 minutes on 2 cores

SMOKE = "ray_jobs/configs/cpu_smoke.yaml"
STEPS = 100
KILLS = 20


def kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL the driver and every process under it (raylet, GCS, workers) at once, as a power cut would."""
    root = psutil.Process(process.pid)
    everything = [root, *root.children(recursive=True)]
    for proc in everything:
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(everything, timeout=30)
    process.wait()


def logged_steps(log: Path) -> list[int]:
    if not log.exists():
        return []
    steps = []
    for line in log.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # the line the kill cut short
            continue
        if "loss" in row:
            steps.append(row["step"])
    return steps


def test_sigkill_during_saves_leaves_only_loadable_checkpoints_and_resume_is_exact(ray_cluster, tiny_model_dir,
                                                                                    tmp_path):
    common = [f"storage_path={tmp_path}", f"model={tiny_model_dir}", "build_tiny_model=false", "num_workers=1",
              f"max_steps={STEPS}", "eval_every=1", "log_every=1", "keep_checkpoints=3", "val_limit=2",
              "lora_dropout=0.1"]
    train.main(["--config", SMOKE, "run_name=straight", *common])

    command = [sys.executable, "-m", "ray_jobs.train", "--config", SMOKE, "run_name=killed", *common]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # each run starts its own embedded cluster
    run_dir = tmp_path / "killed"
    log = run_dir / "logs" / "metrics.jsonl"
    rng = random.Random(0)
    kills = []
    for _ in range(KILLS):
        expected_start = (resume_step(str(run_dir)) or 0) + 1
        seen = len(logged_steps(log))
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 180
        while time.time() < deadline and len(logged_steps(log)) == seen and process.poll() is None:
            time.sleep(0.05)
        assert process.poll() is None, "the run ended before it could be killed; raise STEPS"
        new = logged_steps(log)[seen:]
        assert new and new[0] == expected_start, f"resumed at {new[:1]}, not after Ray's latest checkpoint"
        time.sleep(rng.uniform(0.0, 2.0))  # steps and saves alternate; saves take most of the time
        kill_tree(process)
        kills.append(logged_steps(log)[-1])

        listed = list_checkpoints(str(run_dir))
        for checkpoint in listed:
            loaded = load_checkpoint(checkpoint["path"])
            assert loaded.template is not None
        registered = resume_step(str(run_dir))
        if listed and registered:
            # meta.json follows Ray's registration by at most one checkpoint either way.
            assert abs(listed[-1]["step"] - registered) <= 1, (listed[-1]["step"], registered)
    print("killed after steps", kills)
    assert len(set(kills)) > 5, "the kills landed at many different points"

    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert '"status": "finished"' in finished.stdout
    a = load_file(tmp_path / "straight" / f"step-{STEPS:06d}" / "adapter" / "adapter_model.safetensors")
    b = load_file(run_dir / f"step-{STEPS:06d}" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "20 kills and resumes change nothing"
    assert [c["step"] for c in list_checkpoints(str(run_dir))][-1] == STEPS
