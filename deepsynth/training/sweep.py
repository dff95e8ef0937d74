"""The LoRA sweep's config: which ranks, alphas, learning rates, dropouts and target sets to search.

`ray_jobs/tune_lora.py` runs one Ray Tune trial per combination; the job API validates sweep
requests against the same dataclass. Trial names are built from their parameters, so the same
sweep lists the same trials every time (a re-run finds and continues them).

    sweep = load_sweep("ray_jobs/configs/sweep_cpu.yaml")
    for trial in sweep.trials():   # {"run_name": "...-r4-a8-lr0.0002-d0.05", "lora_rank": 4, ...}
        ...
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# Trials one sweep may hold: every trial is a run folder, and the job API validates each before it submits.
MAX_TRIALS = 256


@dataclass
class SweepConfig:
    sweep_name: str
    """Name of the sweep; re-running with the same name continues or reports it."""
    base_config: str
    """The training YAML every trial starts from."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """TrainConfig keys set for every trial."""
    ranks: list[int] = field(default_factory=lambda: [4, 8, 16, 32, 64])
    lrs: list[float] = field(default_factory=lambda: [2e-4])
    alphas: str | list[int] = "tied"
    """"tied" (alpha = alpha_per_rank * rank) or a list of alphas to search."""
    alpha_per_rank: float = 2.0
    dropouts: list[float] = field(default_factory=lambda: [0.05])
    target_sets: list[str | list[str]] | None = None
    """lora_targets values to search (presets such as default and all, or lists of names); None keeps the base
    config's."""
    max_concurrent_trials: int = 8
    """Upper bound; the sweep also never asks for more workers than the cluster has."""
    grace_period: int = 1
    """ASHA: steps a trial runs before it can be stopped."""
    rouge_documents: int = 16

    def __post_init__(self) -> None:
        if not self.ranks or any(r < 1 for r in self.ranks):
            raise ValueError(f"ranks must be positive integers, got {self.ranks}.")
        if not self.lrs or any(lr <= 0 for lr in self.lrs):
            raise ValueError(f"lrs must be positive, got {self.lrs}.")
        if self.alphas != "tied" and (not isinstance(self.alphas, list) or not self.alphas):
            raise ValueError(f"alphas must be 'tied' or a list of values, got {self.alphas!r}.")
        for name in ("max_concurrent_trials", "grace_period", "rouge_documents"):
            if not 1 <= getattr(self, name) <= 10_000:
                raise ValueError(f"{name} must be in [1, 10000], got {getattr(self, name)}.")
        if not 0 < self.alpha_per_rank <= 1000:
            raise ValueError(f"alpha_per_rank must be in (0, 1000], got {self.alpha_per_rank}.")
        size = math.prod(len(values) for values in (
            self.ranks, self.lrs, [None] if self.alphas == "tied" else self.alphas, self.dropouts,
            self.target_sets or [None]))
        if size > MAX_TRIALS:
            raise ValueError(f"The grid has {size} trials (ranks x lrs x alphas x dropouts x target_sets), more than "
                             f"MAX_TRIALS={MAX_TRIALS}; search fewer values, or run several sweeps.")

    def trials(self) -> list[dict]:
        """Every combination of the searched values, as TrainConfig overrides with a stable run name."""
        alphas = [None] if self.alphas == "tied" else self.alphas
        out = []
        for rank, lr, alpha, dropout, targets in itertools.product(
            self.ranks, self.lrs, alphas, self.dropouts, self.target_sets or [None]
        ):
            alpha = int(self.alpha_per_rank * rank) if alpha is None else alpha
            name = f"{self.sweep_name}-r{rank}-a{alpha}-lr{lr:g}-d{dropout:g}" + (
                f"-t{targets if isinstance(targets, str) else '+'.join(targets)}" if targets else ""
            )
            trial = {"run_name": name, "lora_rank": rank, "lora_alpha": alpha, "lr": lr, "lora_dropout": dropout}
            out.append({**trial, "lora_targets": targets} if targets else trial)
        return out


def load_sweep(path: str) -> SweepConfig:
    values = yaml.safe_load(Path(path).read_text()) or {}
    known = set(SweepConfig.__dataclass_fields__)
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"Unknown sweep keys {unknown} in {path}; known keys: {sorted(known)}.")
    return SweepConfig(**values)
