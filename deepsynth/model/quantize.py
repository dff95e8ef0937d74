"""4-bit routed experts for QLoRA: bitsandbytes NF4, one quantized matrix per expert.

bitsandbytes' 4-bit path (`BitsAndBytesConfig`) replaces `nn.Linear` modules. DeepSeek-OCR-2's
routed experts, 2.42 B of its 3.39 B parameters, are not linear modules but two fused 3-D
parameters per MoE layer (`gate_up_proj [E, 2I, H]`, `down_proj [E, H, I]`), so bitsandbytes
leaves them in bf16 and QLoRA would cost more memory than bf16 LoRA.

`quantize_experts` replaces each fused experts module by `Nf4Experts`: the routing loop of
transformers' eager experts forward, over per-expert `bnb.nn.Linear4bit` layers (NF4, double
quantization, the same settings as the rest of the QLoRA decoder). Gate and up stay fused per
expert, as in the checkpoint. bitsandbytes does the quantizing and the 4-bit matmuls on CPU and
CUDA; only the loop is ours.

The 4-bit experts are frozen. Nothing is written back to the base model: a QLoRA checkpoint is
an adapter over the unchanged base checkpoint, which the native class loads as before.

    model = DeepseekOcr2ForConditionalGeneration.from_pretrained(path, quantization_config=bnb_config)
    quantize_experts(model, compute_dtype=torch.bfloat16)     # number of experts modules replaced
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

EXPERT_PARAMETERS = ("gate_up_proj", "down_proj")
"""The fused 3-D parameters of transformers' MoE experts modules (DeepSeek-OCR-2, DeepSeek-V2)."""


def is_fused_experts(module: nn.Module) -> bool:
    """A transformers experts module whose routed experts are fused 3-D parameters."""
    return all(isinstance(getattr(module, name, None), nn.Parameter) and getattr(module, name).dim() == 3
               for name in EXPERT_PARAMETERS)


def _linear_4bit(weight: torch.Tensor, compute_dtype: torch.dtype) -> nn.Module:
    import bitsandbytes as bnb

    out_features, in_features = weight.shape
    layer = bnb.nn.Linear4bit(in_features, out_features, bias=False, compute_dtype=compute_dtype,
                              quant_type="nf4", compress_statistics=True, device="meta")
    layer.weight = bnb.nn.Params4bit(weight.detach().clone(), requires_grad=False, quant_type="nf4",
                                     compress_statistics=True)
    return layer.to(weight.device)  # bitsandbytes quantizes on this move


class Nf4Experts(nn.Module):
    """Routed experts in 4 bits: `experts(hidden_states, top_k_index, top_k_weights)` as transformers calls them."""

    def __init__(self, gate_up: nn.ModuleList, down: nn.ModuleList, act_fn: Any):
        super().__init__()
        self.gate_up, self.down, self.act_fn = gate_up, down, act_fn
        self.num_experts = len(gate_up)

    @classmethod
    def from_fused(cls, experts: nn.Module, compute_dtype: torch.dtype) -> Nf4Experts:
        if getattr(experts, "has_bias", False):
            raise ValueError(f"{type(experts).__name__} has expert biases, which Nf4Experts does not carry.")
        gate_up = nn.ModuleList(_linear_4bit(w, compute_dtype) for w in experts.gate_up_proj)
        down = nn.ModuleList(_linear_4bit(w, compute_dtype) for w in experts.down_proj)
        return cls(gate_up, down, experts.act_fn)

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(hidden_states)
        # Only the experts some token was routed to run, each on its own tokens.
        for expert in top_k_index.unique().tolist():
            token_idx, slot = torch.where(top_k_index == expert)
            gate, up = self.gate_up[expert](hidden_states[token_idx]).chunk(2, dim=-1)
            expert_out = self.down[expert](self.act_fn(gate) * up) * top_k_weights[token_idx, slot, None]
            out.index_add_(0, token_idx, expert_out.to(out.dtype))
        return out


def quantize_experts(model: nn.Module, compute_dtype: torch.dtype) -> int:
    """Replace every fused experts module of `model` by `Nf4Experts`, freeing its bf16 weights; return how many."""
    targets = [(name, module) for name, module in model.named_modules() if is_fused_experts(module)]
    for name, module in targets:
        parent_name, _, attribute = name.rpartition(".")
        setattr(model.get_submodule(parent_name), attribute, Nf4Experts.from_fused(module, compute_dtype))
    return len(targets)
