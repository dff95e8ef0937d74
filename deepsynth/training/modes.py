"""What trains: the full decoder, LoRA adapters, or LoRA over a 4-bit base (QLoRA).

In every mode the vision tower is frozen by reference (`freeze_vision`). LoRA targets are
found among the *decoder's* linear layers and passed to PEFT as full module names, so a
`q_proj` inside the vision encoder can never be adapted by accident. The routed experts of the
MoE layers are fused 3-D parameters, not linear modules; LoRA adapts the attention, the dense
MLPs and the shared experts, and full mode trains the routed experts too.

    model, processor, family = load_for_training(name, "lora", dtype="bfloat16", device="cuda")
    model, table = prepare_trainable(model, family, mode="lora", rank=16, alpha=32, dropout=0.05)
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from deepsynth.model.families import ModelFamily
from deepsynth.model.freezing import ModuleRow, format_table, freeze_vision, table_of
from deepsynth.model.loading import LoadedModel, family_class, load_model_and_processor, model_type_of

logger = logging.getLogger(__name__)

# Attention and MLP projections of DeepSeek decoders (dense layers and shared experts alike).
DEFAULT_LORA_SUFFIXES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def quantization_config(model_name: str, compute_dtype: torch.dtype) -> Any:
    """4-bit NF4 for the decoder; the family's vision tower, projector and head stay full precision."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
        llm_int8_skip_modules=list(family_class(model_type_of(model_name)).full_precision_modules),
    )


def load_for_training(
    model_name: str,
    mode: str,
    *,
    dtype: str,
    device: str,
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
    compute_dtype: torch.dtype = torch.float32,
) -> LoadedModel:
    """Load the base model for `mode`: quantized to 4 bits for qlora, as stored otherwise."""
    return load_model_and_processor(
        model_name,
        dtype=dtype,
        device=device,
        attn_implementation=attn_implementation,
        trust_remote_code=trust_remote_code,
        quantization_config=quantization_config(model_name, compute_dtype) if mode == "qlora" else None,
    )


def find_lora_targets(model: nn.Module, family: ModelFamily, suffixes: list[str] | None = None) -> list[str]:
    """Full names of the decoder's linear modules whose last name part is one of `suffixes`.

    Raises ValueError naming `lora_targets` when nothing matches, listing what could.
    """
    wanted = set(suffixes or DEFAULT_LORA_SUFFIXES)
    decoder_ids = {id(m) for part in family.decoder_parts(model).values() for m in part.modules()}
    linear = [
        name
        for name, module in model.named_modules()
        if id(module) in decoder_ids and isinstance(module, nn.Linear) and name
    ]
    targets = [name for name in linear if name.rsplit(".", 1)[-1] in wanted]
    if not targets:
        available = sorted({name.rsplit(".", 1)[-1] for name in linear})
        raise ValueError(f"lora_targets {sorted(wanted)} match no linear module of the decoder; choose from {available}.")
    return targets


def prepare_trainable(
    model: nn.Module,
    family: ModelFamily,
    mode: str,
    *,
    rank: int = 16,
    alpha: int = 32,
    dropout: float = 0.05,
    targets: list[str] | None = None,
    freeze_projector: bool = False,
) -> tuple[nn.Module, list[ModuleRow]]:
    """Freeze the vision tower and set up `mode`; return the model to train and its parameter table."""
    freeze_vision(model, include_projector=freeze_projector)
    if mode == "full":
        rows = table_of(model, {**family.vision_parts(model, True), **family.decoder_parts(model)})
        logger.info("Full decoder fine-tune:\n%s", format_table(rows))
        return model, rows

    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    lora_targets = find_lora_targets(model, family, targets)
    if mode == "qlora":
        # Casts norms to fp32 for stable 4-bit training; gradient checkpointing stays a separate choice.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=lora_targets))
    base = model.get_base_model()
    lora = {name: m for name, m in model.named_modules() if name.endswith(("lora_A", "lora_B"))}
    rows = table_of(model, {**family.vision_parts(base, True), "lora": nn.ModuleList(lora.values())})
    logger.info("%s on %d decoder modules:\n%s", mode.upper(), len(lora_targets), format_table(rows))
    return model, rows


def trainable_share(rows: list[ModuleRow]) -> float:
    """Trainable parameters as a share of all parameters, from a parameter table's total row."""
    total = rows[-1]
    return total.trainable / total.parameters
