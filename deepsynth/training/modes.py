"""What trains: the full decoder, LoRA adapters, or LoRA over a 4-bit base (QLoRA).

In every mode the vision tower is frozen by reference (`freeze_vision`), and so is the
projector unless `freeze_projector=False`. Full mode also freezes the MoE router gates unless
`train_router=True`: the native model adds no load-balancing loss, so a trained router can
collapse onto a few experts.

LoRA targets are a preset or a list of names, looked up among the *decoder's* modules only, so
a `q_proj` inside the vision encoder can never be adapted by accident:
- `default`: the decoder's linear layers (attention, the dense MLP and the shared experts), the
  set vLLM can serve as a LoRA adapter;
- `all`: those plus the routed experts, which are fused 3-D parameters (`experts.gate_up_proj`,
  `experts.down_proj`) that PEFT adapts through `target_parameters`, one low-rank pair per expert;
- a list: linear-module suffixes (`q_proj`) and/or `experts.gate_up_proj`, `experts.down_proj`.

QLoRA stores the decoder's linear layers *and* the routed experts in 4-bit NF4
(`deepsynth.model.quantize`) and upcasts nothing: what does not train stays as loaded.

    model, processor, family = load_for_training(name, "lora", dtype="bfloat16", device="cuda")
    model, rows = prepare_trainable(model, family, mode="lora", rank=16, alpha=32, targets="all")
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from deepsynth.model.families import ModelFamily
from deepsynth.model.freezing import freeze_vision
from deepsynth.model.loading import LoadedModel, family_class, load_model_and_processor, model_type_of
from deepsynth.model.memory import MemoryRow, format_memory_table, memory_table
from deepsynth.model.quantize import EXPERT_PARAMETERS, is_fused_experts, quantize_experts

logger = logging.getLogger(__name__)

# Attention and MLP projections of DeepSeek decoders (dense layers and shared experts alike).
DEFAULT_LORA_SUFFIXES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
EXPERT_TARGETS = tuple(f"experts.{name}" for name in EXPERT_PARAMETERS)
LORA_PRESETS = {"default": DEFAULT_LORA_SUFFIXES, "all": DEFAULT_LORA_SUFFIXES + EXPERT_TARGETS}


def check_lora_choice(mode: str, targets: str | list[str], dropout: float) -> None:
    """Refuse LoRA settings that PEFT or the 4-bit experts cannot run, before anything loads."""
    if isinstance(targets, str) and targets not in LORA_PRESETS:
        raise ValueError(f"lora_targets {targets!r} is not a preset; choose {sorted(LORA_PRESETS)} or a list of names.")
    names = LORA_PRESETS[targets] if isinstance(targets, str) else targets
    if mode == "full" or not any(name in EXPERT_TARGETS for name in names):
        return
    if mode == "qlora":
        raise ValueError(
            "lora_targets that include the routed experts do not combine with mode=qlora: the 4-bit experts have no "
            "LoRA path (PEFT adapts fused experts as bf16 parameters). Use lora_targets: default with qlora, or "
            "mode: lora for lora_targets: all."
        )
    if dropout:
        raise ValueError(
            f"lora_targets that include the routed experts need lora_dropout: 0 (got {dropout}): PEFT adapts the "
            "fused experts as parameters, where dropout on their input cannot be applied."
        )


def quantization_config(model_name: str, compute_dtype: torch.dtype) -> Any:
    """4-bit NF4 for the decoder's linear layers; the family's vision tower, projector and head stay as loaded."""
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
    experts_implementation: str | None = None,
    trust_remote_code: bool = False,
    compute_dtype: torch.dtype = torch.float32,
    v1_mode: str = "gundam",
) -> LoadedModel:
    """Load the base model for `mode`: for qlora its linear layers and routed experts in 4 bits, as stored otherwise."""
    loaded = load_model_and_processor(
        model_name,
        dtype=dtype,
        device=device,
        attn_implementation=attn_implementation,
        experts_implementation=experts_implementation,
        trust_remote_code=trust_remote_code,
        v1_mode=v1_mode,
        quantization_config=quantization_config(model_name, compute_dtype) if mode == "qlora" else None,
    )
    if mode == "qlora":
        replaced = quantize_experts(loaded.model, compute_dtype)
        logger.info("Stored the routed experts of %d MoE layers in 4-bit NF4", replaced)
    return loaded


@dataclass(frozen=True)
class LoraTargets:
    """What LoRA adapts: decoder linear modules and routed-expert parameters, by full name."""

    modules: list[str]
    parameters: list[str]


def find_lora_targets(model: nn.Module, family: ModelFamily, targets: str | list[str] = "default") -> LoraTargets:
    """The decoder's modules and expert parameters that `targets` (a preset or a list of names) selects.

    Raises ValueError naming `lora_targets` when a preset is unknown or nothing matches, listing what could.
    """
    check_lora_choice("lora", targets, 0.0)
    wanted = set(LORA_PRESETS[targets] if isinstance(targets, str) else targets)
    decoder = {id(m) for part in family.decoder_parts(model).values() for m in part.modules()}
    in_decoder = [(name, m) for name, m in model.named_modules() if id(m) in decoder and name]
    linear = [name for name, m in in_decoder if isinstance(m, nn.Linear)]
    modules = [name for name in linear if name.rsplit(".", 1)[-1] in wanted]
    experts = [name for name, m in in_decoder if is_fused_experts(m)]
    parameters = [f"{name}.{p}" for name in experts for p in EXPERT_PARAMETERS if f"experts.{p}" in wanted]
    if not modules and not parameters:
        available = sorted({name.rsplit(".", 1)[-1] for name in linear}) + (list(EXPERT_TARGETS) if experts else [])
        raise ValueError(f"lora_targets {sorted(wanted)} match no module of the decoder; choose from {available}.")
    return LoraTargets(modules, parameters)


def prepare_trainable(
    model: nn.Module,
    family: ModelFamily,
    mode: str,
    *,
    rank: int = 16,
    alpha: int = 32,
    dropout: float = 0.0,
    targets: str | list[str] = "default",
    freeze_projector: bool = True,
    train_router: bool = False,
) -> tuple[nn.Module, list[MemoryRow]]:
    """Freeze the vision tower (and projector), set up `mode`; return the model to train and its memory table.

    Works on a model on the `meta` device too: that is how the full-size accounting sizes each mode.
    """
    freeze_vision(model, include_projector=freeze_projector)
    if mode == "full":
        if not train_router:
            for gate in family.router_parts(model):
                gate.requires_grad_(False)
        rows = memory_table(model)
        logger.info("Full decoder fine-tune, router %s:\n%s", "trained" if train_router else "frozen",
                    format_memory_table(rows))
        return model, rows

    from peft import LoraConfig, get_peft_model

    check_lora_choice(mode, targets, dropout)
    found = find_lora_targets(model, family, targets)
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=found.modules or None,
                        target_parameters=found.parameters or None)
    model = get_peft_model(model, config)
    rows = memory_table(model)
    logger.info("%s on %d decoder modules and %d expert parameters:\n%s", mode.upper(), len(found.modules),
                len(found.parameters), format_memory_table(rows))
    return model, rows


def trainable_share(rows: list[MemoryRow]) -> float:
    """Trainable parameters as a share of all parameters, from a memory table's total row."""
    total = rows[-1]
    return total.trainable / total.parameters


SIZED_CHOICES = {"full": ("full", "default"), "lora default": ("lora", "default"), "lora all": ("lora", "all"),
                 "qlora": ("qlora", "default")}


def size_choices(model_config: Any, rank: int = 16) -> dict[str, list[MemoryRow]]:
    """The memory table of full, LoRA default, LoRA all and QLoRA for a DeepSeek-OCR-2 config, built on `meta`.

    Nothing is allocated, so the published 3.4 B model is sized in about a second: weights in the
    config's dtype (bf16 for the published one), QLoRA's 4-bit tensors by bitsandbytes' NF4 layout.
    """
    from transformers import DeepseekOcr2ForConditionalGeneration

    from deepsynth.model.families import Ocr2Family
    from deepsynth.model.memory import quantized_parameter_names

    dtype = getattr(model_config, "dtype", None) or torch.bfloat16
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype  # config.json stores "bfloat16"
    tables = {}
    for name, (mode, targets) in SIZED_CHOICES.items():
        with torch.device("meta"):
            model = DeepseekOcr2ForConditionalGeneration(model_config).to(dtype)
            four_bit = quantized_parameter_names(model, Ocr2Family.full_precision_modules) if mode == "qlora" else set()
            model, _ = prepare_trainable(model, Ocr2Family, mode, rank=rank, alpha=2 * rank, targets=targets)
        tables[name] = memory_table(model, assume_4bit=four_bit)
    return tables
