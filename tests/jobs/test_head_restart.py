"""Restart survival across a Ray head crash: the job API on its own cluster, started and killed from the CLI.

The cluster is a `ray start --head --block` process group with its own temp dir and free ports (never
`ray stop`, which would stop every cluster on the machine). The API is deployed with `serve deploy`,
and the test talks to it over HTTP only. While a train job runs, every process of the cluster is
SIGKILLed; a new head on the same ports knows no jobs and no Serve apps. Redeployed over the same
SQLite file, the API reconciles: the job is `paused` (it left a checkpoint), and `resume` continues
from that checkpoint to the end.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import requests
import yaml

from deepsynth.dashboard import wait_for_dashboard

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
PROJECT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    # Not imported from tests/conftest.py: importing it as a module would run it again and replace the
    # session's RAY_AUTH_TOKEN.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(fetch, done, timeout: float, what: str):
    deadline = time.time() + timeout
    value = None
    while time.time() < deadline:
        try:
            value = fetch()
            if done(value):
                return value
        except requests.RequestException as err:
            value = err
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}; last: {value}")


class Head:
    """A Ray head node run by the CLI, killed (like a crash) by SIGKILL to every process it started."""

    def __init__(self, env: dict, gcs_port: int, dashboard_port: int, agent_port: int):
        self.env, self.gcs_port, self.dashboard_port, self.agent_port = env, gcs_port, dashboard_port, agent_port
        self.temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
        self.process = subprocess.Popen(
            [str(BIN / "ray"), "start", "--head", "--port", str(gcs_port), "--dashboard-host", "127.0.0.1",
             "--dashboard-port", str(dashboard_port), "--num-cpus", "4", "--temp-dir", self.temp_dir, "--block",
             # Ray's fixed default agent port may be held by the session's cluster.
             "--dashboard-agent-listen-port", str(self.agent_port), "--disable-usage-stats"],
            env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Its Serve and Jobs modules too: `serve deploy` right after /api/version can have its connection dropped.
        wait_for_dashboard(self.dashboard_url, token=env["RAY_AUTH_TOKEN"], timeout_s=120)

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def kill(self) -> None:
        # Job drivers run in their own sessions, so the process group alone would miss them.
        processes = [self.process.pid, *(p.pid for p in psutil.Process(self.process.pid).children(recursive=True))]
        for pid in processes:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait(timeout=30)
        psutil.wait_procs([p for p in map(_process, processes) if p], timeout=30)


def _process(pid: int):
    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None


def test_ray_head_restart_reconciles_a_running_job_to_paused_and_resume_continues(tiny_model_dir, tmp_path):
    ray_token = "restart-" + secrets.token_hex(16)
    api_token = "api-" + secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=ray_token, RAY_JOB_STOP_WAIT_TIME_S="120",
               DEEPSYNTH_API_TOKEN=api_token, PYTHONPATH=str(PROJECT))
    gcs_port, dashboard_port, http_port, agent_port = free_port(), free_port(), free_port(), free_port()
    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump({
        "http_options": {"host": "127.0.0.1", "port": http_port},
        "applications": [{"name": "jobs", "route_prefix": "/api", "import_path": "serve.jobs:build_app",
                          "args": {"state_dir": str(tmp_path / "state"), "storage": str(tmp_path / "storage"),
                                   "model_roots": [str(Path(tiny_model_dir).parent)]}}],
    }))
    base, auth = f"http://127.0.0.1:{http_port}/api", {"Authorization": f"Bearer {api_token}"}

    def deploy(head: Head) -> None:
        subprocess.run([str(BIN / "serve"), "deploy", str(config), "--address", head.dashboard_url], env=env,
                       check=True, cwd=PROJECT, timeout=120, capture_output=True)
        wait_for(lambda: requests.get(f"{base}/healthz", timeout=5), lambda r: r.status_code == 200, 180,
                 "the job API")

    def get(job_id: str) -> dict:
        return requests.get(f"{base}/jobs/{job_id}", headers=auth, timeout=30).json()

    head = Head(env, gcs_port, dashboard_port, agent_port)
    try:
        deploy(head)
        overrides = {"model": str(tiny_model_dir), "num_workers": 1, "max_steps": 12, "eval_every": 2,
                     "log_every": 1, "batch_size": 2, "train_limit": 16, "val_limit": 2}
        created = wait_for(lambda: requests.post(f"{base}/jobs", headers=auth, timeout=60, json={
            "type": "train", "preset": "cpu_smoke", "overrides": overrides}), lambda r: r.status_code != 503, 60,
            "Ray Jobs to accept a job")
        assert created.status_code == 201, created.text
        job_id = created.json()["id"]
        wait_for(lambda: get(job_id), lambda j: j["status"] == "running" and j["resume_step"], 300,
                 "a running job with a checkpoint to resume from")
        head.kill()
    finally:
        head.kill() if head.process.poll() is None else None

    head = Head(env, gcs_port, dashboard_port, agent_port)
    try:
        deploy(head)  # the new app reconciles its records with a Ray that knows no jobs
        job = get(job_id)
        assert job["status"] == "paused" and "no longer knows" in job["error"], job
        resumed_from = job["resume_step"]
        assert resumed_from in [c["step"] for c in job["checkpoints"]]
        metrics_file = tmp_path / "storage" / "runs" / job_id / "logs" / "metrics.jsonl"
        lines_before = len(metrics_file.read_text().splitlines())

        resumed = requests.post(f"{base}/jobs/{job_id}/resume", headers=auth, timeout=60)
        assert resumed.status_code == 202, resumed.text
        done = wait_for(lambda: get(job_id), lambda j: j["status"] in ("succeeded", "failed"), 300, "the resumed run")
        assert done["status"] == "succeeded", done
        new_lines = [json.loads(x) for x in metrics_file.read_text().splitlines()[lines_before:]]
        steps = [x["step"] for x in new_lines if "loss" in x]
        assert steps == list(range(resumed_from + 1, 13)), (resumed_from, steps)
    finally:
        head.kill()
