"""Batched summary generation from page images, with a guard against repetition loops.

OCR-family decoders are known to loop ("costs rose costs rose ..."), so generation bans
repeated n-grams (`no_repeat_ngram_size`) and applies a repetition penalty by default; both can
be turned off to measure how often the model loops on its own. Prompts are left-padded so a
batch of documents generates together.

    options = GenerationOptions(max_new_tokens=64, num_beams=4)
    summaries = generate_summaries(model, processor, [pages_a, pages_b], options=options)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from PIL import Image

from deepsynth.data.collate import DEFAULT_PROMPT
from deepsynth.model.families import IMAGE_TOKEN


@dataclass(frozen=True)
class GenerationOptions:
    max_new_tokens: int = 128
    num_beams: int = 1
    """1 is greedy decoding; more is beam search."""
    no_repeat_ngram_size: int = 4
    """Ban any repeated n-gram of this size; 0 turns the guard off."""
    repetition_penalty: float = 1.1
    """Above 1 discourages tokens already generated; 1 turns it off."""
    min_new_tokens: int = 0
    """Tokens to write before the end-of-sequence token may end the summary; 0 lets the model stop at once."""

    def __post_init__(self) -> None:
        if not 1 <= self.max_new_tokens <= 4096:
            raise ValueError(f"max_new_tokens must be in [1, 4096], got {self.max_new_tokens}.")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError(f"min_new_tokens must be in [0, max_new_tokens={self.max_new_tokens}], "
                             f"got {self.min_new_tokens}.")
        if not 1 <= self.num_beams <= 16:
            raise ValueError(f"num_beams must be in [1, 16], got {self.num_beams}.")
        if self.no_repeat_ngram_size < 0:
            raise ValueError(f"no_repeat_ngram_size must be >= 0 (0 is off), got {self.no_repeat_ngram_size}.")
        if self.repetition_penalty < 1.0:
            raise ValueError(f"repetition_penalty must be >= 1.0 (1.0 is off), got {self.repetition_penalty}.")

    def generate_kwargs(self) -> dict[str, Any]:
        return {
            "max_new_tokens": self.max_new_tokens,
            "min_new_tokens": self.min_new_tokens,
            "num_beams": self.num_beams,
            "do_sample": False,
            "no_repeat_ngram_size": self.no_repeat_ngram_size,
            "repetition_penalty": self.repetition_penalty,
        }


@torch.no_grad()
def generate_summaries(
    model: Any,
    processor: Any,
    documents: Sequence[Sequence[Image.Image]],
    *,
    options: GenerationOptions = GenerationOptions(),
    prompt: str = DEFAULT_PROMPT,
    batch_size: int = 8,
    logits_processor: Any = None,
) -> list[str]:
    """Summaries of `documents` (each a list of page images), `batch_size` documents per `generate` call.

    `logits_processor` is passed to `generate` (tests use it to inject a loop).
    """
    if not hasattr(processor, "image_processor"):
        raise ValueError("generate_summaries needs a DeepSeek-OCR-2 processor; DeepSeek-OCR v1 generation is not supported yet.")
    tokenizer = processor.tokenizer
    device = next(model.parameters()).device
    summaries: list[str] = []
    original_side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation appends on the right, so prompts must end aligned
    try:
        for start in range(0, len(documents), batch_size):
            chunk = documents[start : start + batch_size]
            texts = [f"{IMAGE_TOKEN}\n" * len(pages) + prompt for pages in chunk]
            images = [page for pages in chunk for page in pages]
            inputs = processor(images=images, text=texts, padding=True, return_tensors="pt").to(device)
            output = model.generate(
                **inputs, **options.generate_kwargs(), pad_token_id=tokenizer.pad_token_id,
                logits_processor=logits_processor,
            )
            new_tokens = output[:, inputs["input_ids"].shape[1] :]
            summaries += [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
    finally:
        tokenizer.padding_side = original_side
    return summaries
