"""What a model costs to train, by group: weights, trainable parameters, gradients and optimizer state.

Groups follow where the bytes are in DeepSeek-OCR-2: the vision tower (with the projector),
the routed experts, the rest of the decoder (attention, the dense MLP, shared experts, router,
norms) and the embeddings with the output head. LoRA tensors count in the group they adapt.

`memory_table` reads a prepared model, real or on the `meta` device:
- weight bytes are what the tensors store; a bitsandbytes 4-bit weight counts its packed data
  and quantization statistics. `assume_4bit` names parameters to count as NF4 instead, for a
  model on `meta` that cannot be quantized (`nf4_bytes`; `quantized_parameter_names` lists what
  QLoRA quantizes);
- gradients take one element per trainable parameter, AdamW's two moments two more, in the
  parameter's dtype (torch keeps AdamW state in the parameter's dtype).
Activations are left out: they depend on the batch, not the mode.

    rows = memory_table(model)
    print(format_memory_table(rows))
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

GROUPS = ("vision", "experts", "other decoder", "embeddings")
NF4_BLOCK = 64
"""Weights per 4-bit block; each block stores one 8-bit absmax, and 256 absmaxes share one fp32 scale."""


@dataclass(frozen=True)
class MemoryRow:
    group: str
    parameters: int
    trainable: int
    weight_bytes: int
    gradient_bytes: int
    optimizer_bytes: int

    @property
    def training_bytes(self) -> int:
        return self.weight_bytes + self.gradient_bytes + self.optimizer_bytes


def group_of(name: str) -> str:
    """The group of a parameter name (plain, PEFT-wrapped or 4-bit-expert names alike)."""
    if any(part in name for part in ("vision_tower", "multi_modal_projector", "view_separator",
                                     "sam_model", "vision_model", ".projector.", "image_newline", "view_seperator")):
        return "vision"
    if ".mlp.experts." in name:
        return "experts"
    if "embed_tokens" in name or "lm_head" in name:
        return "embeddings"
    return "other decoder"


def nf4_bytes(numel: int) -> int:
    """Bytes of one tensor in bitsandbytes NF4 with double quantization (packed nibbles, absmaxes, their scales)."""
    blocks = math.ceil(numel / NF4_BLOCK)
    return math.ceil(numel / 2) + blocks + 4 * math.ceil(blocks / 256)


def quantized_parameter_names(model: nn.Module, full_precision_modules: tuple[str, ...]) -> set[str]:
    """The parameters QLoRA stores in 4 bits: every linear weight and fused expert outside `full_precision_modules`."""
    from deepsynth.model.quantize import EXPERT_PARAMETERS, is_fused_experts

    names = set()
    for module_name, module in model.named_modules():
        if any(module_name == skip or module_name.startswith(skip + ".") for skip in full_precision_modules):
            continue
        if isinstance(module, nn.Linear):
            names.add(f"{module_name}.weight")
        elif is_fused_experts(module):
            names.update(f"{module_name}.{p}" for p in EXPERT_PARAMETERS)
    return names


def _stored(param: torch.Tensor) -> tuple[int, int]:
    """(parameters, bytes) of a tensor as stored, reading bitsandbytes' 4-bit quantization state."""
    state = getattr(param, "quant_state", None)
    if state is None:
        return param.numel(), param.numel() * param.element_size()
    extra = [state.absmax, state.code] + ([state.state2.absmax, state.state2.code] if state.nested else [])
    return math.prod(state.shape), param.numel() * param.element_size() + sum(t.numel() * t.element_size() for t in extra)


def memory_table(model: nn.Module, assume_4bit: set[str] = frozenset()) -> list[MemoryRow]:
    """One row per group, then a total row."""
    sums = {g: [0, 0, 0, 0, 0] for g in GROUPS}
    for name, param in model.named_parameters():
        plain = name.removeprefix("base_model.model.").replace(".base_layer", "")  # the name before PEFT wrapped it
        count, stored = _stored(param)
        if plain in assume_4bit:
            stored = nf4_bytes(count)
        trainable = count if param.requires_grad else 0
        row = sums[group_of(plain)]
        for i, value in enumerate((count, trainable, stored, trainable * param.element_size(),
                                   2 * trainable * param.element_size())):
            row[i] += value
    rows = [MemoryRow(g, *values) for g, values in sums.items()]
    return rows + [MemoryRow("total", *(sum(getattr(r, f) for r in rows) for f in (
        "parameters", "trainable", "weight_bytes", "gradient_bytes", "optimizer_bytes")))]


def format_memory_table(rows: list[MemoryRow]) -> str:
    unit, scale = ("GB", 1e9) if rows[-1].weight_bytes >= 1e9 else ("MB", 1e6)
    lines = [f"{'group':<14}{'parameters':>15}{'trainable':>15}"
             + "".join(f"{f'{name} {unit}':>14}" for name in ("weights", "grads", "AdamW"))]
    lines += [f"{r.group:<14}{r.parameters:>15,}{r.trainable:>15,}"
              + "".join(f"{b / scale:>14.3f}" for b in (r.weight_bytes, r.gradient_bytes, r.optimizer_bytes))
              for r in rows]
    return "\n".join(lines)
