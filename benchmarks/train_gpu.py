"""Training step time of the full-size DeepSeek-OCR-2 on one GPU: LoRA vs full decoder, batch 1-8.

    python -m benchmarks.train_gpu [--batch-sizes 1 2 4 8] [--steps 5]

The model is built from the published DeepSeek-OCR-2 configuration with random weights, so
nothing is downloaded: SAM ViT-B, the Qwen2-0.5B-sized vision encoder with learned queries, and
the 3B MoE decoder (12 layers, 64 routed experts of which 6 are active, 2 shared). Pages are
768 px renders of the built-in corpus (257 visual tokens each), bf16 autocast, vision frozen.

Reported per mode and batch size: median step time, tokens/s, CUDA peak memory, and model-FLOPs
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

TEXT = dict(
    vocab_size=129280, hidden_size=1280, intermediate_size=6848, num_hidden_layers=12,
    mlp_layer_types=["dense"] + ["sparse"] * 11, num_attention_heads=10, num_key_value_heads=10,
    n_routed_experts=64, n_shared_experts=2, num_experts_per_tok=6, moe_intermediate_size=896,
    max_position_embeddings=8192, bos_token_id=0, eos_token_id=1,
)
VISION = dict(
    sam_config=dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, global_attn_indexes=[2, 5, 8, 11],
                    downsample_channels=[512, 896]),
    encoder_config=dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                        num_key_value_heads=2, max_position_embeddings=32768),
)


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

    from transformers import AutoProcessor, DeepseekOcr2Config, DeepseekOcr2ForConditionalGeneration

    from deepsynth.data.collate import SummaryCollator
    from deepsynth.data.datasets import load_records
    from deepsynth.data.render import get_layout, render_pages
    from deepsynth.model.families import Ocr2Family
    from deepsynth.model.inputs import to_model
    from deepsynth.model.tiny import build_tiny_model
    from deepsynth.training.modes import prepare_trainable

    device = torch.device("cuda")
    name = torch.cuda.get_device_name(0)
    peak = next((flops for key, flops in PEAK_BF16.items() if key in name), 989e12)
    with tempfile.TemporaryDirectory() as tmp:
        # Only the tokenizer and processor come from the tiny build; the processor is set to the real sizes.
        processor = AutoProcessor.from_pretrained(build_tiny_model(tmp, sam_patch_size=16))
    family = Ocr2Family(processor)
    records = load_records("builtin", "train", max(args.batch_sizes))
    examples = [{"pages": render_pages(r["text"], get_layout("ocr2-page")), "summary": r["summary"]} for r in records]

    rows = []
    for mode in ("lora", "full"):
        torch.manual_seed(0)
        config = DeepseekOcr2Config(vision_config=VISION, text_config=TEXT, image_token_id=processor.image_token_id)
        model = DeepseekOcr2ForConditionalGeneration(config).to(device, torch.bfloat16)
        model, _ = prepare_trainable(model, family, mode)
        base = model.get_base_model() if mode == "lora" else model
        active = active_decoder_parameters(base)
        sam = sum(p.numel() for p in base.model.vision_tower.sam_encoder.parameters())
        encoder = sum(p.numel() for p in base.model.vision_tower.vision_encoder.parameters())
        vision_flops_per_page = 2 * (sam * 4096 + encoder * 512)
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
            rows.append({"mode": mode, "batch": batch_size, "step_s": step, "tokens_per_s": tokens / step,
                         "peak_gb": torch.cuda.max_memory_allocated() / 2**30, "mfu": flops / step / peak})
        del model, optimizer
        torch.cuda.empty_cache()

    best = {mode: max(r["mfu"] for r in rows if r["mode"] == mode) for mode in ("lora", "full")}
    report("train_gpu", rows, {"device": name, "best_mfu": best, "rows": rows})


if __name__ == "__main__":
    main()
