"""Batched summary generation from page images, with a guard against repetition loops.

OCR-family decoders are known to loop ("costs rose costs rose ..."). The guard looks at the
generated tokens only, never at the prompt, whose thousands of image tokens and instruction
would otherwise be banned or penalised from the first step (and cost O(prompt) work per step):

- `WindowedNGramBan` bans any token that would repeat an n-gram already generated inside a
  sliding window of the last `ngram_window` generated tokens, as DeepSeek-OCR's own
  `NoRepeatNGramLogitsProcessor` does (its vLLM recipes: n-gram 20 within 50 tokens for OCR-2,
  30 within 90 for v1, with table tags whitelisted). Summaries are short, so ours defaults to
  4 within 64. Its per-step cost is O(batch x window x n), whatever the prompt's length.
- `GeneratedRepetitionPenalty` discourages tokens already generated (HF's penalty, restricted
  to the generated tokens).

Both can be turned off to measure how often the model loops on its own. Prompts are left-padded
so a batch of documents generates together, and the inputs take the model's dtype, so a bf16
checkpoint generates in bf16 as the reference `infer()` does.

    options = GenerationOptions(max_new_tokens=64, num_beams=4)
    summaries = generate_summaries(model, processor, [pages_a, pages_b], options=options, prompt=template.prompt)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from PIL import Image
from transformers import LogitsProcessor, LogitsProcessorList

from deepsynth.data.collate import DEFAULT_PROMPT
from deepsynth.model.families import IMAGE_TOKEN, ModelFamily, V1Family
from deepsynth.model.inputs import placement, to_model


@dataclass(frozen=True)
class GenerationOptions:
    max_new_tokens: int = 128
    num_beams: int = 1
    """1 is greedy decoding; more is beam search."""
    no_repeat_ngram_size: int = 4
    """Ban a generated n-gram of this size from repeating within `ngram_window` generated tokens; 0 turns it off."""
    ngram_window: int = 64
    """How many of the latest generated tokens the n-gram ban looks back over."""
    repetition_penalty: float = 1.1
    """Above 1 discourages tokens already generated (the prompt's are never penalised); 1 turns it off."""
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
        if self.no_repeat_ngram_size and self.ngram_window < self.no_repeat_ngram_size:
            raise ValueError(f"ngram_window={self.ngram_window} must be at least no_repeat_ngram_size="
                             f"{self.no_repeat_ngram_size}, or no n-gram fits in it.")
        if self.repetition_penalty < 1.0:
            raise ValueError(f"repetition_penalty must be >= 1.0 (1.0 is off), got {self.repetition_penalty}.")

    def guard(self, prompt_length: int) -> list[LogitsProcessor]:
        """The repetition guard for prompts of `prompt_length` tokens."""
        guard: list[LogitsProcessor] = []
        if self.no_repeat_ngram_size:
            guard.append(WindowedNGramBan(prompt_length, self.no_repeat_ngram_size, self.ngram_window))
        if self.repetition_penalty > 1.0:
            guard.append(GeneratedRepetitionPenalty(prompt_length, self.repetition_penalty))
        return guard


class WindowedNGramBan(LogitsProcessor):
    """Ban tokens that would repeat an n-gram seen within the last `window` generated tokens."""

    def __init__(self, prompt_length: int, ngram_size: int, window: int, whitelist_token_ids: Iterable[int] = ()):
        if ngram_size < 1 or window < ngram_size:
            raise ValueError(f"need 1 <= ngram_size <= window, got ngram_size={ngram_size}, window={window}.")
        self.prompt_length, self.ngram_size, self.window = prompt_length, ngram_size, window
        self.whitelist = torch.tensor(sorted(set(whitelist_token_ids)), dtype=torch.long)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        n = self.ngram_size
        recent = input_ids[:, self.prompt_length :][:, -self.window :]
        if recent.shape[1] < n:
            return scores
        grams = recent.unfold(1, n, 1)  # (rows, grams, n): every complete n-gram in the window
        # A gram repeats if its first n-1 tokens are the latest n-1 tokens; then its last token is banned.
        matches = (grams[:, :, :-1] == recent[:, recent.shape[1] - (n - 1) :].unsqueeze(1)).all(dim=2)
        hits = torch.zeros(scores.shape, dtype=torch.int32, device=scores.device)
        hits.scatter_add_(1, grams[:, :, -1], matches.to(torch.int32))
        banned = hits > 0
        if self.whitelist.numel():
            banned[:, self.whitelist.to(scores.device)] = False
        return scores.masked_fill(banned, -float("inf"))


class GeneratedRepetitionPenalty(LogitsProcessor):
    """HF's repetition penalty over the generated tokens only."""

    def __init__(self, prompt_length: int, penalty: float):
        self.prompt_length, self.penalty = prompt_length, penalty

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        generated = input_ids[:, self.prompt_length :]
        if generated.shape[1] == 0:
            return scores
        picked = scores.gather(1, generated)
        picked = torch.where(picked < 0, picked * self.penalty, picked / self.penalty)
        return scores.scatter(1, generated, picked)


@torch.no_grad()
def generate_token_ids(
    model: Any,
    processor: Any,
    documents: Sequence[Sequence[Image.Image]],
    *,
    options: GenerationOptions = GenerationOptions(),
    prompt: str = DEFAULT_PROMPT,
    batch_size: int = 8,
    logits_processor: Sequence[LogitsProcessor] = (),
    family: ModelFamily | None = None,
) -> list[list[int]]:
    """Each document's generated summary as token ids, without special tokens (EOS, padding),
    `batch_size` documents per `generate` call.

    `prompt` is the instruction after the pages: the checkpoint's template prompt, so the model
    is asked what it was trained on. `logits_processor` runs before the guard (tests use it to
    force a loop). For DeepSeek-OCR v1, `processor` is its tokenizer and `family` the family it was
    loaded with, which knows its resolution mode (default: gundam, the loader's default).
    """
    # v1 ships no processor: its "processor" is the tokenizer, and the family builds the pages' views.
    if hasattr(processor, "image_processor"):
        family = None
    else:
        family = family if isinstance(family, V1Family) else V1Family(processor)
    tokenizer = processor.tokenizer if family is None else processor
    image_token_id = processor.image_token_id if family is None else family.image_token_id
    special = set(tokenizer.all_special_ids)
    device, dtype = placement(model)
    generated: list[list[int]] = []
    original_side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation appends on the right, so prompts must end aligned
    try:
        for start in range(0, len(documents), batch_size):
            chunk = documents[start : start + batch_size]
            if family is None:
                texts = [f"{IMAGE_TOKEN}\n" * len(pages) + prompt for pages in chunk]
                images = [page for pages in chunk for page in pages]
                batch = processor(images=images, text=texts, padding=True, return_tensors="pt")
            else:
                batch = _left_padded(family, chunk, prompt)
            inputs = to_model(batch, device, dtype)
            prompt_length = inputs["input_ids"].shape[1]
            output = model.generate(
                **inputs, max_new_tokens=options.max_new_tokens, min_new_tokens=options.min_new_tokens,
                num_beams=options.num_beams, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                # HF's own guards scan the whole sequence; off, whatever the checkpoint's generation_config says.
                no_repeat_ngram_size=0, repetition_penalty=1.0,
                # Image placeholders and padding are never text; an untrained model would otherwise write them.
                suppress_tokens=sorted({image_token_id, tokenizer.pad_token_id} - {tokenizer.eos_token_id}),
                logits_processor=LogitsProcessorList([*logits_processor, *options.guard(prompt_length)]),
            )
            generated += [[t for t in row.tolist() if t not in special] for row in output[:, prompt_length:]]
    finally:
        tokenizer.padding_side = original_side
    return generated


def _left_padded(family: V1Family, chunk: Sequence[Sequence[Image.Image]], prompt: str) -> dict[str, torch.Tensor]:
    encoded = [family.encode_prompt(list(pages), prompt) for pages in chunk]
    width = max(len(e.input_ids) for e in encoded)
    pad = family.tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(e.input_ids)) + e.input_ids for e in encoded])
    attention_mask = torch.tensor([[0] * (width - len(e.input_ids)) + [1] * len(e.input_ids) for e in encoded])
    return {"input_ids": input_ids, "attention_mask": attention_mask, **family.merge_vision(encoded, input_ids)}


def generate_summaries(
    model: Any,
    processor: Any,
    documents: Sequence[Sequence[Image.Image]],
    *,
    options: GenerationOptions = GenerationOptions(),
    prompt: str = DEFAULT_PROMPT,
    batch_size: int = 8,
    logits_processor: Sequence[LogitsProcessor] = (),
    family: ModelFamily | None = None,
) -> list[str]:
    """Summaries of `documents` (each a list of page images): `generate_token_ids`, decoded."""
    ids = generate_token_ids(model, processor, documents, options=options, prompt=prompt, batch_size=batch_size,
                             logits_processor=logits_processor, family=family)
    return decode_summaries(getattr(processor, "tokenizer", processor), ids)


def decode_summaries(tokenizer: Any, ids: Sequence[Sequence[int]]) -> list[str]:
    """The text of generated summaries (`generate_token_ids`' output)."""
    return [text.strip() for text in tokenizer.batch_decode(ids, skip_special_tokens=True)]
