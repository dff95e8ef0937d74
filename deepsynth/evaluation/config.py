"""The options of `ray_jobs.evaluate` as one dataclass: the script's flag defaults and the job API's
validation of evaluate jobs both come from here, so they cannot drift apart.

Options left `None` come from the checkpoint's template (`deepsynth.template`): the layout, page
limit, prompt and generation settings it was trained with."""

from __future__ import annotations

from dataclasses import dataclass

from deepsynth.data.long_documents import check_policy
from deepsynth.data.render import get_layout
from deepsynth.evaluation.generation import GenerationOptions
from deepsynth.logs import check_log_format

# Inclusive bounds, far above a real evaluation, so that a probe fails here rather than in the job.
BOUNDS = {"limit": (1, 1_000_000), "batch_size": (1, 1024), "concurrency": (1, 1024), "max_pages": (1, 256)}
GENERATION = ("max_new_tokens", "num_beams", "no_repeat_ngram_size", "repetition_penalty")


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
    layout: str | None = None
    """Page layout; None is the checkpoint's."""
    max_pages: int | None = None
    """Most pages per document; None is the checkpoint's."""
    long_documents: str = "truncate"
    """Documents over max_pages: truncate (score their first pages), skip or error; counted in the report."""
    prompt: str | None = None
    """Instruction after the pages; None is the checkpoint's."""
    batch_size: int = 8
    max_new_tokens: int | None = None
    num_beams: int | None = None
    no_repeat_ngram_size: int | None = None
    repetition_penalty: float | None = None
    device: str = "cpu"
    ray_data: bool = False
    concurrency: int = 1
    log_format: str = "text"
    """text, or json: one JSON object per line."""

    def __post_init__(self) -> None:
        if (self.checkpoint is None) == (self.model is None):
            raise ValueError("Set exactly one of checkpoint (<run>/step-XXXXXX) or model.")
        for name, (low, high) in BOUNDS.items():
            value = getattr(self, name)
            if value is not None and not low <= value <= high:
                raise ValueError(f"{name} must be in [{low}, {high}], got {value}.")
        # The generation options the script builds, with their own bounds (num_beams, max_new_tokens, ...).
        GenerationOptions(**{name: getattr(self, name) for name in GENERATION if getattr(self, name) is not None})
        if self.split is not None and self.split not in ("train", "validation", "test"):
            raise ValueError(f"split must be train, validation or test, got {self.split!r}.")
        if self.device not in ("cpu", "cuda", "auto"):
            raise ValueError(f"device must be cpu, cuda or auto, got {self.device!r}.")
        if self.layout is not None:
            get_layout(self.layout)
        check_policy(self.long_documents)
        check_log_format(self.log_format)
