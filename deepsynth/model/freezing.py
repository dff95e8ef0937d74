"""Freeze the vision tower by module reference, never by parameter-name keywords.

The model family names the vision modules as attributes of the model (`model.model.vision_tower`
for OCR-2), and `freeze_vision` turns off gradients on exactly those parameters. Matching
names like "vision" or "encoder" could freeze a decoder layer that happens to contain the word;
here a parameter is frozen only if it *is* one of the vision tower's, and the function checks
that no decoder parameter was touched.

    table = freeze_vision(model)                   # vision tower only
    table = freeze_vision(model, include_projector=True)
    print(format_table(table))
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from torch import nn

from deepsynth.model.families import Ocr2Family, V1Family
from deepsynth.model.loading import family_class

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModuleRow:
    """One line of the freeze table."""

    module: str
    parameters: int
    trainable: int


def _structure(model: nn.Module) -> type[Ocr2Family] | type[V1Family]:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    try:
        return family_class(model_type)
    except ValueError:
        raise ValueError(
            f"freeze_vision needs a DeepSeek-OCR model with a vision tower; got {type(model).__name__} "
            f"(model_type={model_type!r}), which has none."
        ) from None


def _params(part: nn.Module | nn.Parameter) -> list[nn.Parameter]:
    return [part] if isinstance(part, nn.Parameter) else list(part.parameters())


def freeze_vision(model: nn.Module, include_projector: bool = False) -> list[ModuleRow]:
    """Set requires_grad=False on the vision tower (and optionally the projector); return the freeze table."""
    structure = _structure(model)
    vision = structure.vision_parts(model, include_projector)
    decoder = structure.decoder_parts(model)

    frozen = {id(p) for part in vision.values() for p in _params(part)}
    if not frozen:
        raise RuntimeError(f"freeze_vision found no vision parameters in {type(model).__name__}; nothing was frozen.")
    decoder_ids = {id(p) for part in decoder.values() for p in _params(part)}
    if frozen & decoder_ids:
        # Only reachable if a checkpoint shares weights between its vision and text towers.
        raise RuntimeError("The vision tower shares parameters with the decoder; freezing it would freeze the decoder.")

    for part in vision.values():
        for p in _params(part):
            p.requires_grad_(False)

    rows = table_of(model, {**vision, **decoder})
    logger.info("Froze the vision tower:\n%s", format_table(rows))
    return rows


def table_of(model: nn.Module, parts: dict[str, nn.Module | nn.Parameter]) -> list[ModuleRow]:
    """Per-part parameter counts, plus a row for anything not in `parts` and a total."""
    rows, seen = [], set()
    for name, part in parts.items():
        params = [p for p in _params(part) if id(p) not in seen]
        seen.update(id(p) for p in params)
        rows.append(ModuleRow(name, sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)))
    rest = [p for p in model.parameters() if id(p) not in seen]
    if rest:
        rows.append(ModuleRow("other", sum(p.numel() for p in rest), sum(p.numel() for p in rest if p.requires_grad)))
    total = list(model.parameters())
    rows.append(ModuleRow("total", sum(p.numel() for p in total), sum(p.numel() for p in total if p.requires_grad)))
    return rows


def format_table(rows: list[ModuleRow]) -> str:
    width = max(len(r.module) for r in rows)
    lines = [f"{'module':<{width}}  {'parameters':>12}  {'trainable':>12}"]
    lines += [f"{r.module:<{width}}  {r.parameters:>12,}  {r.trainable:>12,}" for r in rows]
    return "\n".join(lines)
