import logging

import pytest
import torch

from deepsynth.data.collate import IGNORE_INDEX, SummaryCollator
from deepsynth.data.render import LAYOUTS, render_pages
from deepsynth.model.inputs import placement, to_model


def visual_feature_count(model, inputs):
    with torch.no_grad():
        features = model.model.get_image_features(
            inputs["pixel_values"], inputs.get("pixel_values_local"), inputs["num_local_patches"]
        ).pooler_output
    return sum(f.shape[0] for f in features)


def test_image_token_count_equals_the_features_the_model_produces(tiny, corpus_examples):
    model, processor, family = tiny
    a4_pages = render_pages(corpus_examples[0]["text"] * 3, LAYOUTS["ocr2-a4"])
    examples = [corpus_examples[0], {"pages": a4_pages + corpus_examples[1]["pages"], "summary": "Two views."}]
    batch = SummaryCollator(family, max_length=4096)(examples)
    inputs = batch.inputs
    assert "pixel_values_local" in inputs, "the A4 page is tiled"
    image_tokens = int((inputs["input_ids"] == processor.image_token_id).sum())
    assert image_tokens == batch.num_visual_tokens == visual_feature_count(model, to_model(inputs, *placement(model)))
    with torch.no_grad():
        assert torch.isfinite(model(**to_model(inputs, *placement(model))).loss)


def test_labels_cover_exactly_the_summary_and_eos(tiny, corpus_examples):
    _, processor, family = tiny
    tokenizer = processor.tokenizer
    batch = SummaryCollator(family)(corpus_examples[:3])
    input_ids, labels, mask = (batch.inputs[k] for k in ("input_ids", "labels", "attention_mask"))
    for i, example in enumerate(corpus_examples[:3]):
        kept = labels[i][labels[i] != IGNORE_INDEX]
        assert kept[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(kept[:-1]) == example["summary"]
        # The labelled tokens are the last real tokens of the row, aligned with input_ids.
        length = int(mask[i].sum())
        assert torch.equal(input_ids[i, length - len(kept) : length], kept)
        assert (labels[i, length:] == IGNORE_INDEX).all() and (input_ids[i, length:] == tokenizer.pad_token_id).all()
        assert not (labels[i, : length - len(kept)] != IGNORE_INDEX).any()
    assert batch.num_target_tokens == int((labels != IGNORE_INDEX).sum())
    assert batch.num_truncated == 0


def test_truncation_cuts_only_the_summary_and_is_reported(tiny, corpus_examples, caplog):
    _, processor, family = tiny
    prompt_length = len(family.encode_prompt(corpus_examples[0]["pages"], "Summarize the document.").input_ids)
    long = {**corpus_examples[0], "summary": "Energy costs rose sharply across every region. " * 10}
    collate = SummaryCollator(family, max_length=prompt_length + 5)
    with caplog.at_level(logging.WARNING):
        batch = collate([long, corpus_examples[1]])
    assert batch.num_truncated == 1
    assert "Truncated 1 of 2" in caplog.text
    labels = batch.inputs["labels"]
    assert int((labels[0] != IGNORE_INDEX).sum()) == 5
    assert processor.tokenizer.eos_token_id not in labels[0].tolist(), "a cut summary does not teach the model to stop"
    assert batch.inputs["input_ids"].shape[1] <= prompt_length + 5
    assert int((batch.inputs["input_ids"] == processor.image_token_id).sum()) == 2 * 145, "image tokens are never cut"


def test_pages_longer_than_max_length_are_an_error(tiny, corpus_examples):
    _, _, family = tiny
    with pytest.raises(ValueError, match="raise max_length"):
        SummaryCollator(family, max_length=100)(corpus_examples[:1])


def test_an_example_needs_pages(tiny):
    _, _, family = tiny
    with pytest.raises(ValueError, match="at least one page"):
        SummaryCollator(family)([{"pages": [], "summary": "x"}])
