"""DeepSeek-OCR-2's original checkpoint layout (`deepseek-ai/DeepSeek-OCR-2`), the one vLLM serves.

We train the transformers-native `DeepseekOcr2ForConditionalGeneration`; vLLM registers only the
original remote-code layout (`DeepseekOCR2ForCausalLM`, model_type `deepseek_vl_v2`). The two hold
the same numbers under other names, and the native one fuses the routed experts into 3-D tensors.
transformers' `convert_deepseek_ocr2_weights_to_hf.py` goes original -> native with the renames of
its conversion registry (`transformers.conversion_mapping`, key `deepseek_ocr2`); `ORIGINAL_NAMES`
is the inverse of that list, and `original_state_dict` splits the fused experts back into one
`gate_proj` / `up_proj` / `down_proj` per expert.

- `original_config(config)`: the original config.json (`architectures`, `model_type`, the
  `language_config` / `vision_config` / `projector_config` blocks vLLM's `DeepseekVLV2Config` reads);
- `original_state_dict(state)`: native tensors under their original names, experts unfused;
- `vllm_adapter(tensors)`: a PEFT LoRA state dict in the original module names vLLM's LoRA loader
  takes, or a `ValueError` naming what vLLM cannot adapt and the `lora_targets` that it can;
- `vllm_incompatibilities(config, processor)`: why vLLM could not run this model (its vision
  tower and image sizes are built in, with the published sizes), empty for a published-size model.

    layout = OCR2_ORIGINAL
    tensors = layout.original_state_dict(model.state_dict())
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from deepsynth.model.full_size import PUBLISHED_TEXT_CONFIG, PUBLISHED_VISION_CONFIG

ORIGINAL_ARCHITECTURE = "DeepseekOCR2ForCausalLM"
ORIGINAL_MODEL_TYPE = "deepseek_vl_v2"

# Native name -> original name, the inverse of transformers' "deepseek_ocr2" conversion mapping.
# Every native key must match exactly one rule, so a key the mapping does not know is an error.
ORIGINAL_NAMES: tuple[tuple[str, str], ...] = (
    (r"^model\.vision_tower\.sam_encoder\.layers\.(\d+)\.layer_norm1\.", r"model.sam_model.blocks.\1.norm1."),
    (r"^model\.vision_tower\.sam_encoder\.layers\.(\d+)\.layer_norm2\.", r"model.sam_model.blocks.\1.norm2."),
    (r"^model\.vision_tower\.sam_encoder\.layers\.(\d+)\.attn\.", r"model.sam_model.blocks.\1.attn."),
    (r"^model\.vision_tower\.sam_encoder\.layers\.(\d+)\.mlp\.", r"model.sam_model.blocks.\1.mlp."),
    (r"^model\.vision_tower\.sam_encoder\.patch_embed\.projection\.", "model.sam_model.patch_embed.proj."),
    (r"^model\.vision_tower\.sam_encoder\.pos_embed$", "model.sam_model.pos_embed"),
    (r"^model\.vision_tower\.sam_encoder\.neck\.conv1\.", "model.sam_model.neck.0."),
    (r"^model\.vision_tower\.sam_encoder\.neck\.layer_norm1\.", "model.sam_model.neck.1."),
    (r"^model\.vision_tower\.sam_encoder\.neck\.conv2\.", "model.sam_model.neck.2."),
    (r"^model\.vision_tower\.sam_encoder\.neck\.layer_norm2\.", "model.sam_model.neck.3."),
    (r"^model\.vision_tower\.sam_encoder\.proj\.conv1\.", "model.sam_model.net_2."),
    (r"^model\.vision_tower\.sam_encoder\.proj\.conv2\.", "model.sam_model.net_3."),
    (r"^model\.vision_tower\.vision_encoder\.layers\.", "model.qwen2_model.model.model.layers."),
    (r"^model\.vision_tower\.vision_encoder\.norm\.", "model.qwen2_model.model.model.norm."),
    (r"^model\.vision_tower\.query_768_resolution\.", "model.qwen2_model.query_768."),
    (r"^model\.vision_tower\.query_1024_resolution\.", "model.qwen2_model.query_1024."),
    (r"^model\.multi_modal_projector\.", "model.projector.layers."),
    (r"^model\.view_separator$", "model.view_seperator"),  # the original's spelling
    (r"^model\.language_model\.embed_tokens\.", "model.embed_tokens."),
    (r"^model\.language_model\.layers\.", "model.layers."),
    (r"^model\.language_model\.norm\.", "model.norm."),
    (r"^lm_head\.", "lm_head."),
)
_RULES = tuple((re.compile(pattern), target) for pattern, target in ORIGINAL_NAMES)
FUSED_EXPERTS = re.compile(r"^(?P<layer>.+\.mlp\.experts)\.(?P<param>gate_up_proj|down_proj)$")

# What vLLM's LoRA loader adapts in this model: the language model's linear layers (attention, the
# dense MLP and the shared experts). These are deepsynth.training.modes' `lora_targets: default`.
VLLM_LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_PEFT_PREFIX = "base_model.model."
_VLLM_LORA_KEY = re.compile(
    r"^base_model\.model\.model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(shared_experts\.)?(gate|up|down)_proj)"
    r"\.lora_(A|B)\.weight$"
)


def original_name(native: str) -> str:
    """The original checkpoint's name for a native (non-expert) tensor name."""
    matches = [(rule, target) for rule, target in _RULES if rule.search(native)]
    if len(matches) != 1:
        raise ValueError(f"{native!r} matches {len(matches)} rules of the original-layout mapping, not one; "
                         "this model is not a DeepSeek-OCR-2 the mapping knows.")
    rule, target = matches[0]
    return rule.sub(target, native, count=1)


def original_tensors(name: str, tensor: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
    """One native tensor as the original checkpoint's tensors: renamed, or for fused experts one per expert."""
    fused = FUSED_EXPERTS.match(name)
    if fused is None:
        yield original_name(name), tensor
        return
    layer = original_name(fused["layer"] + ".x")[: -len(".x")]
    if fused["param"] == "gate_up_proj":
        # transformers stacks the experts (dim 0) and concatenates gate before up (dim 1).
        gate, up = tensor.chunk(2, dim=1)
        for expert in range(tensor.shape[0]):
            yield f"{layer}.{expert}.gate_proj.weight", gate[expert].contiguous()
            yield f"{layer}.{expert}.up_proj.weight", up[expert].contiguous()
    else:
        for expert in range(tensor.shape[0]):
            yield f"{layer}.{expert}.down_proj.weight", tensor[expert].contiguous()


def original_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A native state dict under the original names, the routed experts split per expert."""
    return {key: value for name, tensor in state.items() for key, value in original_tensors(name, tensor)}


def _first_dense(layer_types: list[str]) -> int:
    dense = 0
    while dense < len(layer_types) and layer_types[dense] == "dense":
        dense += 1
    if any(kind != "sparse" for kind in layer_types[dense:]):
        raise ValueError(f"mlp_layer_types {layer_types} are not dense layers then MoE layers; the original layout "
                         "describes only that (first_k_dense_replace).")
    return dense


def original_config(config: Any, dtype: str = "bfloat16") -> dict[str, Any]:
    """The original config.json of a `DeepseekOcr2Config`, with the fields vLLM's `DeepseekVLV2Config` reads."""
    text, sam, encoder = config.text_config, config.vision_config.sam_config, config.vision_config.encoder_config
    rope = text.rope_parameters or {}
    language = {
        "architectures": ["DeepseekV2ForCausalLM"],
        "model_type": "deepseek_v2",
        "vocab_size": text.vocab_size,
        "hidden_size": text.hidden_size,
        "intermediate_size": text.intermediate_size,
        "moe_intermediate_size": text.moe_intermediate_size,
        "num_hidden_layers": text.num_hidden_layers,
        "num_attention_heads": text.num_attention_heads,
        "num_key_value_heads": text.num_key_value_heads,
        "n_routed_experts": text.n_routed_experts,
        "n_shared_experts": text.n_shared_experts,
        "num_experts_per_tok": text.num_experts_per_tok,
        "first_k_dense_replace": _first_dense(list(text.mlp_layer_types)),
        "moe_layer_freq": 1,
        "topk_method": text.topk_method,
        "n_group": text.n_group,
        "topk_group": text.topk_group,
        "routed_scaling_factor": text.routed_scaling_factor,
        "norm_topk_prob": getattr(text, "norm_topk_prob", False),
        "scoring_func": "softmax",
        "hidden_act": text.hidden_act,
        "rms_norm_eps": text.rms_norm_eps,
        "rope_theta": rope.get("rope_theta", 10000.0),
        "rope_scaling": None,
        "max_position_embeddings": text.max_position_embeddings,
        "attention_bias": text.attention_bias,
        "bos_token_id": text.bos_token_id,
        "eos_token_id": text.eos_token_id,
        "pad_token_id": text.pad_token_id,
        "tie_word_embeddings": False,
        # A DeepSeek-V2 decoder without multi-head latent attention: plain multi-head attention.
        "use_mla": False,
        "kv_lora_rank": None,
        "q_lora_rank": None,
        "qk_nope_head_dim": 0,
        "qk_rope_head_dim": 0,
        "v_head_dim": 0,
        "lm_head": True,
        "rm_head": False,
        "torch_dtype": dtype,
    }
    vision = {
        "model_name": "deepencoderv2",
        "model_type": "vision",
        "image_size": sam.image_size,
        "patch_size": sam.patch_size,
        "mlp_ratio": 3.7362,
        "width": {
            "sam_vit_b": {"width": sam.hidden_size, "layers": sam.num_hidden_layers, "heads": sam.num_attention_heads,
                          "global_attn_indexes": list(sam.global_attn_indexes)},
            "qwen2-0-5b": {"dim": encoder.hidden_size},
        },
    }
    projector = {"model_type": "mlp_projector", "projector_type": "linear", "input_dim": encoder.hidden_size,
                 "n_embed": text.hidden_size}
    duplicated = ("vocab_size", "hidden_size", "intermediate_size", "moe_intermediate_size", "num_hidden_layers",
                  "num_attention_heads", "num_key_value_heads", "n_routed_experts", "n_shared_experts",
                  "num_experts_per_tok", "first_k_dense_replace", "topk_method", "n_group", "topk_group",
                  "max_position_embeddings", "bos_token_id", "eos_token_id", "kv_lora_rank", "q_lora_rank",
                  "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "use_mla", "lm_head", "rm_head")
    return {
        "architectures": [ORIGINAL_ARCHITECTURE],
        "model_type": ORIGINAL_MODEL_TYPE,
        "auto_map": {"AutoConfig": "modeling_deepseekocr2.DeepseekOCR2Config",
                     "AutoModel": "modeling_deepseekocr2.DeepseekOCR2ForCausalLM"},
        "candidate_resolutions": [[sam.image_size, sam.image_size]],
        "global_view_pos": "head",
        "tile_tag": "2D",
        "language_config": language,
        "vision_config": vision,
        "projector_config": projector,
        # The remote code reads these at the top level too.
        **{key: language[key] for key in duplicated},
        "image_token_id": config.image_token_id,
        "torch_dtype": dtype,
    }


# What vLLM builds in for DeepSeek-OCR-2 (vllm/model_executor/models/deepseek_ocr2.py and its processor):
# SAM ViT-B at 1024 px with 16 px patches and 14-patch windows, the Qwen2-0.5B-sized encoder, a
# 1024 px global view and 768 px tiles.
VLLM_BUILT_IN = {
    "sam image_size": 1024, "sam patch_size": 16, "sam window_size": 14,
    "sam hidden_size": PUBLISHED_VISION_CONFIG["sam_config"]["hidden_size"],
    "sam num_hidden_layers": PUBLISHED_VISION_CONFIG["sam_config"]["num_hidden_layers"],
    "sam global_attn_indexes": PUBLISHED_VISION_CONFIG["sam_config"]["global_attn_indexes"],
    "sam downsample_channels": PUBLISHED_VISION_CONFIG["sam_config"]["downsample_channels"],
    "encoder hidden_size": PUBLISHED_VISION_CONFIG["encoder_config"]["hidden_size"],
    "encoder num_hidden_layers": PUBLISHED_VISION_CONFIG["encoder_config"]["num_hidden_layers"],
    "encoder intermediate_size": PUBLISHED_VISION_CONFIG["encoder_config"]["intermediate_size"],
    "global view": 1024, "tile size": 768,
}


def vllm_incompatibilities(config: Any, processor: Any) -> list[str]:
    """What differs from the vision tower and image sizes vLLM builds in; empty when vLLM can run the model."""
    sam, encoder = config.vision_config.sam_config, config.vision_config.encoder_config
    image = processor.image_processor
    actual = {
        "sam image_size": sam.image_size, "sam patch_size": sam.patch_size, "sam window_size": sam.window_size,
        "sam hidden_size": sam.hidden_size, "sam num_hidden_layers": sam.num_hidden_layers,
        "sam global_attn_indexes": list(sam.global_attn_indexes),
        "sam downsample_channels": list(sam.downsample_channels),
        "encoder hidden_size": encoder.hidden_size, "encoder num_hidden_layers": encoder.num_hidden_layers,
        "encoder intermediate_size": encoder.intermediate_size,
        "global view": image.size["height"], "tile size": image.tile_size,
    }
    problems = [f"{key} is {actual[key]}, vLLM builds {value}" for key, value in VLLM_BUILT_IN.items()
                if actual[key] != value]
    if config.text_config.vocab_size > PUBLISHED_TEXT_CONFIG["vocab_size"]:
        problems.append(f"vocab_size {config.text_config.vocab_size} is above the published "
                        f"{PUBLISHED_TEXT_CONFIG['vocab_size']}")
    return problems


def vllm_adapter(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A PEFT LoRA adapter's tensors under the original module names vLLM's LoRA loader expects.

    Raises ValueError, naming the modules, when the adapter touches anything vLLM cannot adapt:
    the routed experts (`lora_targets: all`), the vision tower, the projector, embeddings or head.
    """
    renamed: dict[str, torch.Tensor] = {}
    refused = []
    for key, value in tensors.items():
        module = key.removeprefix(_PEFT_PREFIX)
        module = module.split(".lora_", 1)[0]
        try:
            original = _PEFT_PREFIX + original_name(module) + key[len(_PEFT_PREFIX) + len(module):]
        except ValueError:
            original = key
        if _VLLM_LORA_KEY.match(original) is None:
            refused.append(module)
        renamed[original] = value
    if refused:
        shown = sorted(set(refused))
        raise ValueError(
            f"vLLM applies LoRA to the language model's linear layers only ({', '.join(VLLM_LORA_MODULES)}); this "
            f"adapter also adapts {len(shown)} other module(s), e.g. {shown[:3]}. Train with lora_targets: default "
            "(or a list of those names) to serve the adapter with vLLM, or export only the merged weights "
            "(--no-adapter)."
        )
    return renamed


class Ocr2OriginalLayout:
    """DeepSeek-OCR-2's `OriginalLayout` (deepsynth.model.families): what `deepsynth.export.export_original` writes."""

    name = "deepseek-ai/DeepSeek-OCR-2"
    architecture = ORIGINAL_ARCHITECTURE
    lora_modules = VLLM_LORA_MODULES

    @staticmethod
    def config(config: Any, dtype: str = "bfloat16") -> dict[str, Any]:
        return original_config(config, dtype)

    @staticmethod
    def tensors(name: str, tensor: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
        return original_tensors(name, tensor)

    @staticmethod
    def adapter(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return vllm_adapter(tensors)

    @staticmethod
    def incompatibilities(config: Any, processor: Any) -> list[str]:
        return vllm_incompatibilities(config, processor)


OCR2_ORIGINAL = Ocr2OriginalLayout()
