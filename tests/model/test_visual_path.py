"""The loss must depend on the pages: the review found trainers that silently dropped the images."""

import torch

from deepsynth.data.collate import SummaryCollator
from deepsynth.data.render import LAYOUTS, render_pages
from deepsynth.model.freezing import freeze_vision
from deepsynth.model.inputs import placement, to_model


def test_gradient_reaches_the_pixels_through_a_frozen_vision_tower(tiny, corpus_examples):
    model, _, family = tiny
    freeze_vision(model)
    batch = SummaryCollator(family)(corpus_examples[:1])
    pixels = batch.inputs["pixel_values"].clone().requires_grad_(True)
    loss = model(**to_model({**batch.inputs, "pixel_values": pixels}, *placement(model))).loss
    loss.backward()
    assert torch.isfinite(pixels.grad).all()
    assert pixels.grad.abs().sum() > 0


def test_changing_the_page_changes_the_loss(tiny, corpus_examples):
    model, _, family = tiny
    model.eval()
    collate = SummaryCollator(family)
    example = corpus_examples[0]
    other_page = render_pages("A completely different page about something else.", LAYOUTS["ocr2-page"])
    with torch.no_grad():
        original = model(**to_model(collate([example]).inputs, *placement(model))).loss
        changed = model(**to_model(collate([{**example, "pages": other_page}]).inputs, *placement(model))).loss
    assert torch.isfinite(original) and torch.isfinite(changed)
    assert not torch.isclose(original, changed, rtol=0, atol=1e-6)
