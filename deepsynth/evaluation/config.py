"""The options of `ray_jobs.evaluate` as one dataclass: the script's flag defaults and the job API's
validation of evaluate jobs both come from here, so they cannot drift apart."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EvalConfig:
    """The options of ray_jobs.evaluate a client may set (its CLI flags, as one dataclass)."""

    checkpoint: str | None = None
    """`<run>/step-XXXXXX`, a checkpoint of a run under the storage."""
    model: str | None = None
    """Evaluate a base model instead of a checkpoint."""
    dataset: str | None = None
    """Replaces the benchmark's dataset (builtin, a preset or prepared:<name>)."""
    split: str | None = None
    limit: int = 20
    layout: str = "ocr2-page"
    batch_size: int = 8
    max_new_tokens: int = 64
    num_beams: int = 1
    no_repeat_ngram_size: int = 4
    repetition_penalty: float = 1.1
    device: str = "cpu"
    ray_data: bool = False
    concurrency: int = 1

    def __post_init__(self) -> None:
        if (self.checkpoint is None) == (self.model is None):
            raise ValueError("Set exactly one of checkpoint (<run>/step-XXXXXX) or model.")
        for name in ("limit", "batch_size", "max_new_tokens", "num_beams", "concurrency"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if self.split is not None and self.split not in ("train", "validation", "test"):
            raise ValueError(f"split must be train, validation or test, got {self.split!r}.")
        if self.device not in ("cpu", "cuda", "auto"):
            raise ValueError(f"device must be cpu, cuda or auto, got {self.device!r}.")
