"""The README's first command, end to end on a real local Ray: prepare, evaluate, train, evaluate, export, serve, call.

It runs the demo at its real sizes and checks that the model learned to read the pages. Slow
(about 4 minutes on 2 cores): run with `make test-slow`. The demo starts its own Ray head on free
ports and, with --stop, kills exactly that cluster at the end.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from conftest import free_port
from fresh_checkout import kill_processes_mentioning


@pytest.mark.slow
def test_demo_learns_to_read_pages_serves_and_answers_over_http(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    ray_port = free_port()
    command = [sys.executable, "-m", "ray_jobs.demo", "--out-dir", str(tmp_path), "--ray-port", str(ray_port),
               "--dashboard-port", str(free_port()), "--serve-port", str(free_port()), "--agent-port",
               str(free_port()), "--stop"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=1800, env=env, check=False)
    except subprocess.TimeoutExpired:
        kill_processes_mentioning(str(ray_port))  # the demo's cluster runs in its own session and outlives it
        raise
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])

    assert summary["rouge_untrained"]["rougeL"] < 0.3, "the random model knows nothing"
    assert summary["rouge"]["rougeL"] >= 0.8, "trained, it reads the held-out pages"
    assert summary["summary"] == summary["reference"], "the served model writes the sample's headline"
    assert summary["usage"]["pages"] == 1 and summary["usage"]["visual_tokens"] == 145
    assert [job["type"] for job in summary["jobs"]] == ["prepare_dataset"], "the job created over HTTP is listed"
    assert (Path(summary["dataset"]) / "manifest.json").exists()
    assert (Path(summary["checkpoint"]) / "meta.json").exists()
    assert set(json.loads(Path(summary["eval_report"]).read_text())["rouge"]) >= {"rouge1", "rougeL"}
    assert (Path(summary["export"]) / "config.json").exists(), "a full fine-tune exports a model folder"
    mentions_port = re.compile(rf"\b{ray_port}\b")  # the head's --port, GCS's port flag, the raylet's address
    leftovers = [p for p in psutil.process_iter(["cmdline"]) if mentions_port.search(" ".join(p.info["cmdline"] or []))]
    assert not leftovers, "with --stop the demo leaves no Ray process behind"
