"""The serving benchmark on CUDA: full-size DeepSeek-OCR-2 with random weights behind Ray Serve (`make test-gpu`)."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.gpu


@pytest.mark.slow  # benchmarks.gpu_check runs the benchmark as its own part
def test_serve_gpu_benchmark_runs_in_under_ten_minutes():
    out = subprocess.run([sys.executable, "-m", "benchmarks.serve_load", "--gpu", "--rounds", "2"],
                         check=False, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["benchmark"] == "serve_gpu" and result["device"] == "cuda" and result["max_new_tokens"] == 128
    levels = result["levels"]
    assert {"1", "8", "32"} <= set(levels)
    assert all(level["pages_per_s"] > 0 and level["p99_s"] >= level["p50_s"] > 0 for level in levels.values())
