"""Training step time of the full-size DeepSeek-OCR-2 on one GPU: full, LoRA default, LoRA all and QLoRA.

    python -m benchmarks.train_gpu [--batch-sizes 1 2 4 8] [--steps 5]

The model is the published DeepSeek-OCR-2 configuration (`deepsynth.model.full_size`) with random
weights, saved once and loaded through the training path (`load_for_training`), so nothing is
downloaded and QLoRA quantizes exactly as it would the real checkpoint: SAM ViT-B, the
Qwen2-0.5B-sized vision encoder with learned queries, and the 3B MoE decoder (12 layers, 64
routed experts of which 6 are active, 2 shared). Pages are 768 px renders of the built-in corpus
(257 visual tokens each), bf16 weights and autocast, vision frozen; the routed experts run
`grouped_mm` (QLoRA's 4-bit experts their own loop).

Reported per choice and batch size: median step time, tokens/s, CUDA peak memory, and model-FLOPs
utilisation: 6 (full) or 4 (LoRA: no weight gradients) FLOPs per active decoder parameter per
token, plus the frozen vision forward (2 FLOPs per SAM parameter for each of a 1024 px view's
4096 patches, and per encoder parameter for its 512 patches and queries), over the GPU's dense
bf16 peak. An estimate: attention's quadratic FLOPs are left out.
Needs CUDA.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks.common import report

# Dense bf16 peak FLOP/s by device name; H100 and H200 share the same compute.
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12, "A10G": 70e12}


def active_decoder_parameters(model) -> int:
    """Decoder parameters touched per token: everything but the routed experts not chosen."""
    cfg = model.config.text_config
    decoder = sum(p.numel() for p in model.model.language_model.parameters()) + model.lm_head.weight.numel()
    per_expert = 3 * cfg.hidden_size * cfg.moe_intermediate_size
    sparse_layers = cfg.mlp_layer_types.count("sparse")
    return decoder - sparse_layers * (cfg.n_routed_experts - cfg.num_experts_per_tok) * per_expert


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("train_gpu needs CUDA; run it on a GPU machine.")

    import tempfile
    from pathlib import Path

    from transformers import DeepseekOcr2ForConditionalGeneration

    from deepsynth.data.collate import SummaryCollator
    from deepsynth.data.datasets import load_records
    from deepsynth.data.render import get_layout, render_pages
    from deepsynth.model.full_size import published_config
    from deepsynth.model.inputs import to_model
    from deepsynth.model.tiny import build_full_width_model
    from deepsynth.training.modes import SIZED_CHOICES, load_for_training, prepare_trainable

    device = torch.device("cuda")
    name = torch.cuda.get_device_name(0)
    peak = next((flops for key, flops in PEAK_BF16.items() if key in name), 989e12)
    records = load_records("builtin", "train", max(args.batch_sizes))
    examples = [{"pages": render_pages(r["text"], get_layout("ocr2-page")), "summary": r["summary"]} for r in records]

    # FLOPs from the unquantized architecture (a 4-bit tensor's numel counts packed bytes).
    with torch.device("meta"):
        skeleton = DeepseekOcr2ForConditionalGeneration(published_config())
    active = active_decoder_parameters(skeleton)
    sam = sum(p.numel() for p in skeleton.model.vision_tower.sam_encoder.parameters())
    encoder = sum(p.numel() for p in skeleton.model.vision_tower.vision_encoder.parameters())
    vision_flops_per_page = 2 * (sam * 4096 + encoder * 512)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(build_full_width_model(Path(tmp) / "model", num_layers=12, device="cuda"))
        for choice, (mode, targets) in SIZED_CHOICES.items():
            model, _, family = load_for_training(
                model_dir, mode, dtype="bfloat16", device="cuda", compute_dtype=torch.bfloat16,
                experts_implementation=None if mode == "qlora" else "grouped_mm",
            )
            torch.manual_seed(0)
            model, table = prepare_trainable(model, family, mode, targets=targets)
            optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
            model.train()
            for batch_size in args.batch_sizes:
                batch = SummaryCollator(family)(examples[:batch_size])
                inputs = to_model(batch.inputs, device, torch.bfloat16)
                tokens = int(inputs["attention_mask"].sum())
                torch.cuda.reset_peak_memory_stats()
                times = []
                for _ in range(args.steps + 1):
                    torch.cuda.synchronize()
                    start = time.perf_counter()
                    with torch.autocast("cuda", dtype=torch.bfloat16):
                        loss = model(**inputs).loss
                    loss.backward()
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    torch.cuda.synchronize()  # a CPU-GPU sync point, so the timer sees the whole step
                    times.append(time.perf_counter() - start)
                step = statistics.median(times[1:])
                pages = inputs["pixel_values"].shape[0]
                flops = (6 if mode == "full" else 4) * active * tokens + vision_flops_per_page * pages
                rows.append({"choice": choice, "batch": batch_size, "step_s": step, "tokens_per_s": tokens / step,
                             "peak_gb": torch.cuda.max_memory_allocated() / 2**30, "mfu": flops / step / peak,
                             "trainable": table[-1].trainable, "weight_gb": table[-1].weight_bytes / 1e9})
            del model, optimizer
            torch.cuda.empty_cache()

    best = {choice: max(r["mfu"] for r in rows if r["choice"] == choice) for choice in SIZED_CHOICES}
    report("train_gpu", rows, {"device": name, "best_mfu": best, "rows": rows})


if __name__ == "__main__":
    main()
