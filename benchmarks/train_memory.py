"""Peak memory of a full decoder fine-tune vs LoRA vs QLoRA, on a ~100M-parameter DeepSeek-OCR-2.

    python -m benchmarks.train_memory [--steps 3] [--batch-size 2]

The model is the real architecture (SAM, vision encoder with learned queries, MoE decoder with
routed and shared experts) at about 100M parameters, randomly initialised and saved once. Each
mode then trains a few steps in a fresh process, so one mode's allocations cannot hide another's.
The peak is taken over the training steps, after loading (loading a 4-bit model on a CPU passes
through full-precision tensors, which is not what training costs): CUDA's max allocated memory
on a GPU; on a CPU the process's peak resident memory, reset after loading, minus that of a
process that imported the same libraries and loaded nothing.
Targets: LoRA <= 0.5x full, QLoRA <= 0.35x full.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from benchmarks.common import build_medium_model, report

MODES = ("full", "lora", "qlora")


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    # Linux: hand the heap that loading freed back to the OS (glibc keeps it otherwise, and the
    # resident size would still count the full-precision weights a 4-bit load passed through),
    # then restart the peak-RSS count from now.
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")


def measure(mode: str, model_dir: str, steps: int, batch_size: int) -> dict:
    """Runs in a child process: train `steps` steps in `mode` and return the peak memory."""
    from deepsynth.data.collate import SummaryCollator
    from deepsynth.data.datasets import load_records
    from deepsynth.data.render import get_layout, render_pages
    from deepsynth.model.inputs import placement, to_model
    from deepsynth.training.modes import load_for_training, prepare_trainable
    from deepsynth.training.telemetry import peak_memory_mb

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if mode == "baseline":
        reset_peak_memory(device)
        return {"peak_mb": peak_memory_mb(device)}
    model, _, family = load_for_training(model_dir, mode, dtype="float32", device=str(device))
    model, rows = prepare_trainable(model, family, mode, rank=16, alpha=32, dropout=0.0)
    reset_peak_memory(device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    records = load_records("builtin", "train", batch_size)
    batch = SummaryCollator(family)([{"pages": render_pages(r["text"], get_layout("ocr2-page")), "summary": r["summary"]}
                                     for r in records])
    inputs = to_model(batch.inputs, device, placement(model)[1])
    model.train()
    for _ in range(steps):
        model(**inputs).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return {"peak_mb": peak_memory_mb(device), "trainable": rows[-1].trainable}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--child", nargs=2, metavar=("MODE", "MODEL_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], args.child[1], args.steps, args.batch_size)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        num_parameters = build_medium_model(Path(tmp))
        results = {}
        for mode in ("baseline", *MODES):
            out = subprocess.run(
                [sys.executable, "-m", "benchmarks.train_memory", "--steps", str(args.steps),
                 "--batch-size", str(args.batch_size), "--child", mode, str(Path(tmp) / "model")],
                capture_output=True, text=True, check=True,
            )
            results[mode] = json.loads(out.stdout.strip().splitlines()[-1])

    on_gpu = torch.cuda.is_available()
    baseline = 0.0 if on_gpu else results["baseline"]["peak_mb"]
    net = {mode: results[mode]["peak_mb"] - baseline for mode in MODES}
    rows = [{"mode": mode, "peak_mb": results[mode]["peak_mb"], "net_mb": net[mode],
             "trainable": results[mode]["trainable"], "vs_full": net[mode] / net["full"]} for mode in MODES]
    report("train_memory", rows, {
        "parameters": num_parameters,
        "lora_vs_full": net["lora"] / net["full"],
        "qlora_vs_full": net["qlora"] / net["full"],
        "targets": {"lora_vs_full": 0.5, "qlora_vs_full": 0.35},
        "import_baseline_mb": baseline,
    })


if __name__ == "__main__":
    main()
