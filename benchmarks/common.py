"""Shared output for the benchmark scripts: a readable table, then one JSON line for machines."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import torch


def machine() -> dict:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def report(name: str, rows: list[dict], summary: dict) -> None:
    """Print `rows` as a table and `summary` (with the machine) as the last line, in JSON."""
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(_fmt(r[c])) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(_fmt(row[c]).ljust(widths[c]) for c in columns))
    print(json.dumps({"benchmark": name, **summary, "machine": machine()}))


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def build_medium_model(folder: Path) -> int:
    """Save a ~100M-parameter DeepSeek-OCR-2 to `folder/model`, with the tiny model's tokenizer and processor."""
    from transformers import AutoProcessor, DeepseekOcr2Config, DeepseekOcr2ForConditionalGeneration

    from deepsynth.model.tiny import build_tiny_model

    tiny = build_tiny_model(folder / "tiny")
    processor = AutoProcessor.from_pretrained(tiny)
    base = DeepseekOcr2Config.from_pretrained(tiny).to_dict()
    base["vision_config"]["encoder_config"].pop("layer_types", None)  # derived again from the new depth
    base["vision_config"]["sam_config"].update(hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                                               output_channels=128, downsample_channels=[256, 512])
    base["vision_config"]["encoder_config"].update(hidden_size=512, intermediate_size=1536, num_hidden_layers=4,
                                                   num_attention_heads=8, num_key_value_heads=2)
    base["text_config"].update(hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                               mlp_layer_types=["dense"] + ["sparse"] * 7, num_attention_heads=8,
                               num_key_value_heads=8, n_routed_experts=8, n_shared_experts=2, num_experts_per_tok=2,
                               moe_intermediate_size=512, vocab_size=32000)
    config = DeepseekOcr2Config(**{k: v for k, v in base.items() if k in ("vision_config", "text_config", "image_token_id")})
    torch.manual_seed(0)
    model = DeepseekOcr2ForConditionalGeneration(config)
    model.save_pretrained(folder / "model")
    processor.save_pretrained(folder / "model")
    return model.num_parameters()
