"""Turn (page images, prompt, summary) examples into model inputs.

The collator is the one place where a document meets the model's tokens. Through the model
family it expands each page into its image placeholder tokens and vision tensors, appends the
summary and EOS, and builds labels that are -100 everywhere except the summary tokens and EOS,
so the loss is the summary's alone.

Truncation is explicit: only the summary is ever cut (the image tokens must match the image
features one for one), a cut summary loses its EOS, and every cut is counted in the `Batch`
and logged. A prompt whose pages alone exceed `max_length` is an error, not a silent cut.

    collate = SummaryCollator(family, max_length=2048)
    batch = collate([{"pages": pages, "summary": "Energy costs rose."}])
    loss = model(**batch.inputs).loss
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from deepsynth.model.families import ModelFamily

logger = logging.getLogger(__name__)

DEFAULT_PROMPT = "Summarize the document."
IGNORE_INDEX = -100


@dataclass
class Batch:
    inputs: dict[str, Any]
    """Keyword arguments for `model(**inputs)`: input_ids, attention_mask, labels and the vision tensors."""
    num_examples: int
    num_visual_tokens: int
    num_target_tokens: int
    """Label tokens that count in the loss (summary tokens and EOS)."""
    num_truncated: int
    """Examples whose summary was cut to fit `max_length`."""


class SummaryCollator:
    """Collate examples `{"pages": [PIL.Image, ...], "summary": str}` into a right-padded `Batch`."""

    def __init__(self, family: ModelFamily, prompt: str = DEFAULT_PROMPT, max_length: int = 2048):
        if max_length < 16:
            raise ValueError(f"max_length must be at least 16 tokens, got {max_length}.")
        self.family = family
        self.tokenizer = family.tokenizer
        self.prompt = prompt
        self.max_length = max_length

    def __call__(self, examples: Sequence[dict]) -> Batch:
        if not examples:
            raise ValueError("Cannot collate an empty list of examples.")
        encoded, rows, labels = [], [], []
        num_truncated = 0
        for example in examples:
            prompt = self.family.encode_prompt(example["pages"], self.prompt)
            budget = self.max_length - len(prompt.input_ids)
            if budget < 1:
                raise ValueError(
                    f"{len(example['pages'])} pages and the prompt take {len(prompt.input_ids)} tokens, more than "
                    f"max_length={self.max_length}; raise max_length or limit the pages per document."
                )
            target = self.tokenizer.encode(example["summary"], add_special_tokens=False) + [self.tokenizer.eos_token_id]
            if len(target) > budget:
                target = target[:budget]
                num_truncated += 1
            encoded.append(prompt)
            rows.append(prompt.input_ids + target)
            labels.append([IGNORE_INDEX] * len(prompt.input_ids) + target)

        if num_truncated:
            logger.warning("Truncated %d of %d summaries to fit max_length=%d.", num_truncated, len(rows), self.max_length)
        input_ids, attention_mask, label_ids = _pad_right(rows, labels, self.tokenizer.pad_token_id)
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": label_ids}
        inputs.update(self.family.merge_vision(encoded, input_ids))
        return Batch(
            inputs=inputs,
            num_examples=len(rows),
            num_visual_tokens=sum(p.num_visual_tokens for p in encoded),
            num_target_tokens=int((label_ids != IGNORE_INDEX).sum()),
            num_truncated=num_truncated,
        )


def _pad_right(
    rows: list[list[int]], labels: list[list[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    label_ids = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for i, (row, label) in enumerate(zip(rows, labels)):
        input_ids[i, : len(row)] = torch.tensor(row)
        attention_mask[i, : len(row)] = 1
        label_ids[i, : len(label)] = torch.tensor(label)
    return input_ids, attention_mask, label_ids
