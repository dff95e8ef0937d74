"""The README's first command runs this job; here it runs end to end on a real local Ray."""

import json
import math
import os
import subprocess
import sys


def test_demo_renders_with_ray_data_and_runs_a_forward_pass(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    result = subprocess.run(
        [sys.executable, "-m", "ray_jobs.demo", "--out-dir", str(tmp_path), "--num-documents", "3"],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert math.isfinite(summary["loss"]) and summary["loss"] > 0
    assert summary["documents"] == 3
    assert summary["visual_tokens"] >= 3 * 145
    assert (tmp_path / "tiny-model" / "config.json").exists()
    for doc_id in ("train-00000", "train-00001", "train-00002"):
        assert doc_id in result.stdout, "every document's compression row is printed"
