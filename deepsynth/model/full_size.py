"""The published DeepSeek-OCR-2's architecture, to check shapes and memory at full size without its weights.

`published_config()` is the configuration of `deepseek-community/DeepSeek-OCR-2` (3.389 B
parameters, bf16). The values come from two public sources, since the checkpoint itself cannot
be downloaded here:

- the decoder's: the `language_config` of `deepseek-ai/DeepSeek-OCR-2`'s config.json (a DeepSeek-V2
  MoE without MLA: 12 layers of width 1280, the first dense, 64 routed experts of which 6 are
  active, 2 shared), which transformers' `convert_deepseek_ocr2_weights_to_hf.py` copies into
  `text_config`, turning `first_k_dense_replace: 1` into `mlp_layer_types`;
- the vision tower's: written by that conversion script itself (SAM ViT-B with global attention
  in layers 2, 5, 8 and 11, downsampling to 512 and 896 channels; a Qwen2-0.5B-sized encoder of
  24 layers, 14 heads, 2 KV heads, MLP 4864, RMS eps 1e-6, rope theta 1e6).

Built on the `meta` device it allocates nothing, so tests can count and size the real model:

    with torch.device("meta"):
        model = DeepseekOcr2ForConditionalGeneration(published_config())
    sum(p.numel() for p in model.parameters())        # 3_389_119_360

`published_config(num_hidden_layers=3)` is the full-width slice: every width, the expert count
and the whole vision tower of the real model, with 3 decoder layers (1.29 B parameters).
"""

from __future__ import annotations

from typing import Any

from transformers import DeepseekOcr2Config

PUBLISHED_PARAMETERS_B = 3.389
"""deepseek-community/DeepSeek-OCR-2's parameter count in billions (6.78 GB of bf16 safetensors)."""

PUBLISHED_TEXT_CONFIG: dict[str, Any] = dict(
    vocab_size=129280,
    hidden_size=1280,
    intermediate_size=6848,
    num_hidden_layers=12,
    num_attention_heads=10,
    num_key_value_heads=10,
    n_routed_experts=64,
    n_shared_experts=2,
    num_experts_per_tok=6,
    moe_intermediate_size=896,
    topk_method="greedy",
    n_group=1,
    topk_group=1,
    max_position_embeddings=8192,
    bos_token_id=0,
    eos_token_id=1,
)

PUBLISHED_VISION_CONFIG: dict[str, Any] = dict(
    sam_config=dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, global_attn_indexes=[2, 5, 8, 11],
                    downsample_channels=[512, 896]),
    encoder_config=dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                        intermediate_size=4864, rms_norm_eps=1e-6, rope_theta=1000000.0, vocab_size=1),
)


def published_config(num_hidden_layers: int | None = None, *, image_token_id: int | None = None,
                     **special_tokens: int) -> DeepseekOcr2Config:
    """The published DeepSeek-OCR-2 configuration; with `num_hidden_layers`, a full-width slice.

    `image_token_id` and `special_tokens` (bos_token_id, eos_token_id, pad_token_id) fit the
    configuration to another tokenizer without changing any size.
    """
    layers = num_hidden_layers or PUBLISHED_TEXT_CONFIG["num_hidden_layers"]
    if layers < 2:
        raise ValueError(f"num_hidden_layers must be at least 2 (a dense layer, then MoE layers), got {layers}.")
    text = {**PUBLISHED_TEXT_CONFIG, **special_tokens, "num_hidden_layers": layers,
            "mlp_layer_types": ["dense"] + ["sparse"] * (layers - 1)}
    extra = {} if image_token_id is None else {"image_token_id": image_token_id}
    return DeepseekOcr2Config(vision_config=PUBLISHED_VISION_CONFIG, text_config=text, dtype="bfloat16", **extra)
