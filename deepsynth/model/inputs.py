"""Model inputs on the model's device and in its dtype: the one place every path casts them.

The processor and the collator give float32 pixel tensors. A model loaded in bf16 (the
published DeepSeek-OCR-2 is stored in bf16, and `dtype="auto"` keeps that) fails on them
("Input type (float) and bias type (c10::BFloat16) should be the same"), so training,
evaluation, the sweep's ROUGE stage, serving and export all move their inputs through
`to_model`. Integer tensors (token ids, masks, tile counts) keep their dtype.

    inputs = to_model(processor(images=pages, text=prompts, return_tensors="pt"), *placement(model))
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn


def placement(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """The device and the floating dtype that `model`'s inputs must have.

    The dtype is that of the first floating parameter: both families' module trees start with
    the vision tower, the only consumer of floating inputs, and QLoRA keeps it in full precision.
    """
    for parameter in model.parameters():
        if parameter.is_floating_point():
            return parameter.device, parameter.dtype
    raise ValueError("The model has no floating-point parameters to take its input dtype from.")


def to_model(inputs: Mapping[str, Any], device: torch.device | str, dtype: torch.dtype) -> dict[str, Any]:
    """`inputs` with every tensor on `device` and every floating tensor in `dtype`."""
    moved = {}
    for key, value in inputs.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device, dtype) if value.is_floating_point() else value.to(device)
        moved[key] = value
    return moved
