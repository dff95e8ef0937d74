"""Memory of a full decoder fine-tune vs LoRA vs QLoRA: weight bytes and peak memory of a few steps.

    python -m benchmarks.train_memory [--model medium|full-width] [--steps 3] [--batch-size 2]

Two models, both the real architecture (SAM, vision encoder with learned queries, MoE decoder with
routed and shared experts), randomly initialised and saved once:
- `medium` (the default): about 100M parameters in float32. Targets: LoRA <= 0.5x full,
  QLoRA <= 0.35x full.
- `full-width`: the published DeepSeek-OCR-2's widths, 64 experts and whole vision tower with 3
  decoder layers (1.29 B parameters), in bf16 like the published weights. 4-bit experts and
  decoder linears give about 0.71x of bf16 LoRA's weight bytes by arithmetic (0.43x at full size,
  where the experts weigh more). Targets: QLoRA weight bytes <= 0.75x LoRA's, QLoRA peak <= 0.85x
  LoRA's. About 10 minutes on 2 CPU cores, and 12 GB of memory for full mode.

Each mode trains in a fresh process, so one mode's allocations cannot hide another's. Weight bytes
are what the model's tensors store after preparation (4-bit data and statistics included). The
peak is taken over the training steps, after loading (loading a 4-bit model passes through
full-precision tensors, which is not what training costs): CUDA's max allocated memory on a GPU;
on a CPU the process's peak resident memory, reset after loading, minus that of a process that
imported the same libraries and loaded nothing. On a CPU the weights are views of the memory-mapped
checkpoint, so the reset also unmaps its resident pages: the peak then counts the pages training
reads, not those loading read (see `reset_peak_memory`), and glibc returns freed large blocks at
once (`MALLOC_ENV`).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from benchmarks.common import build_medium_model, report

MODES = ("full", "lora", "qlora")
DTYPES = {"medium": "float32", "full-width": "bfloat16"}
MADV_DONTNEED = 4
# glibc raises its mmap threshold each time a large block is freed, so later blocks of that size
# come from the heap and stay resident after they are freed: the peak would count freed memory
# (on the full-width slice, QLoRA's 4-bit matmuls' dequantized weights, 1.2 GB of them). A fixed
# threshold returns every large block to the OS when it is freed, in every mode alike.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def reset_peak_memory(device: torch.device, model_dir: str | None = None) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    # Linux: hand the heap that loading freed back to the OS (glibc keeps it otherwise, and the
    # resident size would still count the full-precision weights a 4-bit load passed through).
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc_trim(0)
    if model_dir:
        # On a CPU the weights are views of the memory-mapped safetensors file, so the resident size
        # counts every page loading read, used or not: QLoRA's bf16 experts, read once to quantize
        # them, would stay counted. Unmapping the file's resident pages (they fault back in when a
        # tensor is used) leaves the peak to what training itself touches, in every mode alike.
        for line in Path("/proc/self/maps").read_text().splitlines():
            span, *_, path = line.split(maxsplit=5)
            if path.startswith(str(Path(model_dir).resolve())):
                start, end = (int(x, 16) for x in span.split("-"))
                libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), MADV_DONTNEED)
    # Restart the peak-RSS count (VmHWM) from now.
    Path("/proc/self/clear_refs").write_text("5")


def measure(mode: str, model_dir: str, steps: int, batch_size: int, dtype: str) -> dict:
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
    compute_dtype = torch.bfloat16 if dtype == "bfloat16" else torch.float32
    model, _, family = load_for_training(model_dir, mode, dtype=dtype, device=str(device), compute_dtype=compute_dtype)
    model, rows = prepare_trainable(model, family, mode, rank=16, alpha=32, dropout=0.0)
    reset_peak_memory(device, model_dir)
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
    total = rows[-1]
    return {"peak_mb": peak_memory_mb(device), "parameters": total.parameters, "trainable": total.trainable,
            "weight_bytes": total.weight_bytes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=sorted(DTYPES), default="medium")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--child", nargs=2, metavar=("MODE", "MODEL_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    dtype = DTYPES[args.model]
    if args.child:
        print(json.dumps(measure(args.child[0], args.child[1], args.steps, args.batch_size, dtype)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        if args.model == "medium":
            build_medium_model(Path(tmp))
        else:
            from deepsynth.model.tiny import build_full_width_model

            build_full_width_model(Path(tmp) / "model")
        results = {}
        for mode in ("baseline", *MODES):
            out = subprocess.run(
                [sys.executable, "-m", "benchmarks.train_memory", "--model", args.model, "--steps", str(args.steps),
                 "--batch-size", str(args.batch_size), "--child", mode, str(Path(tmp) / "model")],
                capture_output=True, text=True, check=True, env={**os.environ, **MALLOC_ENV},
            )
            results[mode] = json.loads(out.stdout.strip().splitlines()[-1])

    on_gpu = torch.cuda.is_available()
    baseline = 0.0 if on_gpu else results["baseline"]["peak_mb"]
    net = {mode: results[mode]["peak_mb"] - baseline for mode in MODES}
    weights = {mode: results[mode]["weight_bytes"] for mode in MODES}
    rows = [{"mode": mode, "weight_mb": weights[mode] / 1e6, "peak_mb": results[mode]["peak_mb"], "net_mb": net[mode],
             "trainable": results[mode]["trainable"], "vs_full": net[mode] / net["full"],
             "vs_lora": net[mode] / net["lora"]} for mode in MODES]
    summary = {"model": args.model, "dtype": dtype, "parameters": results["full"]["parameters"],
               "import_baseline_mb": baseline}
    if args.model == "medium":
        summary.update(lora_vs_full=net["lora"] / net["full"],
                       qlora_vs_full=net["qlora"] / net["full"], targets={"lora_vs_full": 0.5, "qlora_vs_full": 0.35})
    else:
        summary.update(qlora_vs_lora_weights=weights["qlora"] / weights["lora"],
                       qlora_vs_lora_peak=net["qlora"] / net["lora"],
                       targets={"qlora_vs_lora_weights": 0.75, "qlora_vs_lora_peak": 0.85})
    report("train_memory", rows, summary)


if __name__ == "__main__":
    main()
