"""What a model replica does with a batch of documents: group them by options, generate, count summary tokens.

The model is loaded by `load_source`, the function evaluation loads through, and summaries come
from the same `generate_summaries`, with its repetition guard. Each job carries the prompt and
generation options the ingress resolved from the checkpoint's (or adapter's) template and the
request; documents that share both go through one `generate` call. The pages' usage (visual
and source-text tokens) is counted before the job gets here, by the ingress.

    loaded = load_served_model(config)
    results, generate_seconds = summarize_jobs(loaded.model, loaded.processor, jobs)
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from deepsynth.evaluation.generation import GenerationOptions, decode_summaries, generate_token_ids
from deepsynth.serving.config import ServeConfig
from deepsynth.training.checkpoint import LoadedCheckpoint, load_source


@dataclass
class SummaryJob:
    """One document on its way to the model replica."""

    pages: list[Image.Image]
    options: GenerationOptions
    prompt: str
    adapter: str | None
    received: float = field(default=0.0)
    """time.monotonic() when the model replica received it; set by the replica."""


@dataclass(frozen=True)
class SummaryResult:
    summary: str
    summary_tokens: int
    batch_size: int
    queue_s: float
    generate_s: float


def load_served_model(config: ServeConfig) -> LoadedCheckpoint:
    """The model `config` names, loaded exactly as evaluation loads it."""
    return load_source(config.checkpoint, config.model, dtype=config.dtype, device=config.replica_device)


def summarize_jobs(
    model: Any, processor: Any, jobs: Sequence[SummaryJob], family: Any = None
) -> tuple[list[SummaryResult], list[float]]:
    """Summaries for `jobs` in order, and the seconds of each `generate` call (one per prompt and options).

    `family` is the loaded model's (needed for DeepSeek-OCR v1, whose processor is its tokenizer)."""
    groups: dict[tuple[GenerationOptions, str], list[int]] = {}
    for index, job in enumerate(jobs):
        groups.setdefault((job.options, job.prompt), []).append(index)
    results: list[SummaryResult | None] = [None] * len(jobs)
    generate_seconds = []
    for (options, prompt), indices in groups.items():
        started = time.monotonic()
        ids = generate_token_ids(model, processor, [jobs[i].pages for i in indices], options=options,
                                 prompt=prompt, batch_size=len(indices), family=family)
        summaries = decode_summaries(getattr(processor, "tokenizer", processor), ids)
        generate_s = time.monotonic() - started
        generate_seconds.append(generate_s)
        for index, summary, tokens in zip(indices, summaries, ids):
            results[index] = SummaryResult(
                summary=summary,
                summary_tokens=len(tokens),  # what the model generated, EOS excluded
                batch_size=len(indices),
                queue_s=started - jobs[index].received,
                generate_s=generate_s,
            )
    return results, generate_seconds
