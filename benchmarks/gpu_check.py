"""The GPU check in one command: the `gpu` tests, `train_gpu` and `serve_load --gpu`, figures in one JSON file.

    make gpu-check                                   # or: python -m benchmarks.gpu_check --out gpu-check.json

Meant for a machine with one CUDA GPU, in at most 8 minutes: each part runs in its own process
under its share of the time, so one that hangs or fails cannot take the others' figures with it.
The file holds, per part, its exit status, seconds, the JSON line it printed (the benchmarks'
figures) and the tail of its output, and whether the vLLM engine met its 3x over HF at concurrency
32 (with the vllm extra installed; without it the serving benchmark measures HF alone). Nothing is downloaded: the models are the published
DeepSeek-OCR-2 configuration with random weights.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

VLLM = importlib.util.find_spec("vllm") is not None
"""With the vllm extra installed (pip install 'deepsynth[vllm]'), the serving benchmark runs both engines."""
PARTS = {
    # name: (command, seconds allowed). The `slow` gpu tests run the benchmarks below, so they are left out.
    "gpu_tests": ([sys.executable, "-m", "pytest", "-m", "gpu and not slow", "-q", "-p", "no:cacheprovider"], 150),
    "train_gpu": ([sys.executable, "-m", "benchmarks.train_gpu", "--batch-sizes", "1", "4", "--steps", "3"], 120),
    "serve_load": ([sys.executable, "-m", "benchmarks.serve_load", "--gpu", "--rounds", "1" if VLLM else "2",
                    "--engine", *(["hf", "vllm"] if VLLM else ["hf"])], 210),
}


def run_part(command: list[str], seconds: int) -> dict:
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=seconds)
        rc, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as timeout:
        rc, output = "timeout", (timeout.stdout or b"").decode(errors="replace") + (timeout.stderr or b"").decode(
            errors="replace")
    lines = [line for line in output.splitlines() if line.startswith('{"benchmark"')]
    return {"rc": rc, "seconds": round(time.perf_counter() - start, 1),
            "figures": json.loads(lines[-1]) if lines else None, "tail": output[-3000:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="gpu-check.json", help="where the JSON file of figures goes")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check needs a CUDA GPU; run it on a GPU machine (make gpu-check).")
    results = {"device": torch.cuda.get_device_name(0), "parts": {}}
    for name, (command, seconds) in PARTS.items():
        print(f"gpu_check: {name} (up to {seconds} s)", flush=True)
        results["parts"][name] = run_part(command, seconds)
        print(f"gpu_check: {name} -> rc={results['parts'][name]['rc']} in {results['parts'][name]['seconds']} s",
              flush=True)
    figures = results["parts"]["serve_load"]["figures"] or {}
    results["vllm"] = ({"vllm_vs_hf_c32": figures.get("vllm_vs_hf_c32"), "target": 3.0,
                        "met": (figures.get("vllm_vs_hf_c32") or 0) >= 3.0,
                        "tokens_per_s_c32": figures.get("vllm_tokens_per_s")}
                       if VLLM else "not measured: the vllm extra is not installed (pip install 'deepsynth[vllm]')")
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"gpu_check: figures in {args.out}")
    if any(part["rc"] != 0 for part in results["parts"].values()):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
