"""The repetition guard looks at generated tokens only, inside a sliding window."""

import pytest
import torch
from transformers import NoRepeatNGramLogitsProcessor

from deepsynth.evaluation.generation import GeneratedRepetitionPenalty, GenerationOptions, WindowedNGramBan

VOCAB = 16


def banned(processor, prompt: list[int], generated: list[int]) -> set[int]:
    input_ids = torch.tensor([prompt + generated])
    scores = processor(input_ids, torch.zeros(1, VOCAB))
    return set(torch.nonzero(torch.isinf(scores[0])).flatten().tolist())


def test_a_forming_loop_is_banned():
    guard = WindowedNGramBan(prompt_length=2, ngram_size=3, window=64)
    # After 5 6 5 6 5, writing 6 would repeat the 3-gram (6, 5, 6).
    assert banned(guard, [1, 2], [5, 6, 5, 6, 5]) == {6}
    assert banned(guard, [1, 2], [5, 6, 7, 8]) == set()


def test_only_ngrams_inside_the_window_count():
    guard = WindowedNGramBan(prompt_length=0, ngram_size=2, window=4)
    # The 2-gram (3, 4) is 6 tokens back, outside the 4-token window.
    assert banned(guard, [], [3, 4, 9, 10, 11, 3]) == set()
    assert banned(WindowedNGramBan(0, 2, 8), [], [3, 4, 9, 10, 11, 3]) == {4}


def test_a_prompt_full_of_repeats_changes_nothing():
    guard = WindowedNGramBan(prompt_length=0, ngram_size=3, window=64)
    repeats = [5, 6] * 500  # image placeholders and a looping instruction
    for generated in ([], [5], [5, 6], [7, 5, 6], [5, 6, 5, 6, 5]):
        plain = banned(WindowedNGramBan(1, 3, 64), [1], generated)
        assert banned(WindowedNGramBan(len(repeats), 3, 64), repeats, generated) == plain, generated
    # HF's own processor scans the whole sequence, so the same prompt bans tokens from the first step.
    assert banned(NoRepeatNGramLogitsProcessor(3), repeats, [5]) == {6}
    assert banned(guard, [], [5]) == set()


def test_whitelisted_tokens_may_repeat():
    guard = WindowedNGramBan(prompt_length=0, ngram_size=2, window=64, whitelist_token_ids=[6])
    assert banned(guard, [], [5, 6, 5]) == set()


def test_the_penalty_applies_to_generated_tokens_only():
    penalty = GeneratedRepetitionPenalty(prompt_length=3, penalty=2.0)
    scores = torch.tensor([[1.0, 2.0, -2.0, 4.0, 8.0]])
    out = penalty(torch.tensor([[0, 1, 2, 3, 2]]), scores.clone())  # prompt 0 1 2, generated 3 2
    assert out.tolist() == [[1.0, 2.0, -4.0, 2.0, 8.0]]


def test_options_build_the_guard_they_describe():
    kinds = lambda options: [type(p) for p in options.guard(prompt_length=10)]  # noqa: E731
    assert kinds(GenerationOptions()) == [WindowedNGramBan, GeneratedRepetitionPenalty]
    assert kinds(GenerationOptions(no_repeat_ngram_size=0, repetition_penalty=1.0)) == []
    with pytest.raises(ValueError, match="ngram_window"):
        GenerationOptions(no_repeat_ngram_size=8, ngram_window=4)
