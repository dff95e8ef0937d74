"""Compression accounting: how many text tokens a document has versus the visual tokens of its pages.

This is the number the product rests on: a page of dense text costs a few hundred visual
tokens, ten to twenty times fewer than its text tokens on real checkpoints. Text tokens are
counted with the model's own tokenizer; visual tokens come from the model family, which
computes them from the page size exactly as the processor expands image placeholders.

    stats = compression_stats(text, pages, family)
    stats.text_tokens, stats.visual_tokens, stats.ratio
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

from PIL import Image

from deepsynth.model.families import ModelFamily


@dataclass(frozen=True)
class CompressionStats:
    pages: int
    text_tokens: int
    visual_tokens: int

    @property
    def ratio(self) -> float:
        """Text tokens per visual token; above 1 means the pages are the cheaper input."""
        return self.text_tokens / self.visual_tokens

    def to_dict(self) -> dict:
        return {**asdict(self), "ratio": self.ratio}


def compression_stats(text: str, pages: Sequence[Image.Image], family: ModelFamily) -> CompressionStats:
    if not pages:
        raise ValueError("compression_stats needs at least one page.")
    return CompressionStats(
        pages=len(pages),
        text_tokens=len(family.tokenizer.encode(text, add_special_tokens=False)),
        visual_tokens=sum(family.count_visual_tokens(*page.size) for page in pages),
    )
