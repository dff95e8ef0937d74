"""DeepSeek-OCR v1 input building, run through the real (tiny) native v1 model in every mode."""

import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer

from deepsynth.data.collate import SummaryCollator
from deepsynth.model.families import V1Family
from deepsynth.model.freezing import freeze_vision
from deepsynth.model.inputs import placement, to_model
from deepsynth.model.loading import load_model_and_processor
from deepsynth.model.tokens import V1_MODES


@pytest.fixture(scope="module")
def v1_model(tiny_v1_dir):
    return load_model_and_processor(str(tiny_v1_dir)).model


@pytest.fixture(scope="module")
def tokenizer(tiny_v1_dir):
    return AutoTokenizer.from_pretrained(tiny_v1_dir)


@pytest.mark.parametrize(
    "mode,size,expected",
    [
        ("tiny", (900, 1200), 8 * 9 + 1),
        ("small", (640, 640), 10 * 11 + 1),
        ("base", (1240, 1754), 16 * 17 + 1),
        ("large", (500, 500), 20 * 21 + 1),
        ("gundam", (600, 600), 16 * 17 + 1),  # fits one crop: global view only
        ("gundam", (1240, 1754), 16 * 17 + 1 + (10 * 2 + 1) * (10 * 3)),  # A4: a 2x3 grid of 640px crops
    ],
)
def test_v1_token_counts_match_the_published_layout(tokenizer, mode, size, expected):
    assert V1Family(tokenizer, mode).count_visual_tokens(*size) == expected


@pytest.mark.parametrize("mode", sorted(V1_MODES))
def test_v1_inputs_run_the_model_in_every_mode(tokenizer, v1_model, mode):
    family = V1Family(tokenizer, mode)
    examples = [
        {"pages": [Image.new("RGB", (1240, 1754), "white")], "summary": "Energy costs rose."},
        {"pages": [Image.new("RGB", (600, 500), "gray")], "summary": "Farm output fell."},
    ]
    batch = SummaryCollator(family, max_length=4096)(examples)
    inputs = batch.inputs
    crops = V1_MODES[mode].crop
    assert set(inputs) == {"input_ids", "attention_mask", "labels", "pixel_values", "images_spatial_crop"} | (
        {"pixel_values_local"} if crops else set())
    assert inputs["images_spatial_crop"].tolist() == ([[2, 3], [1, 1]] if crops else [[1, 1], [1, 1]])
    view = V1_MODES[mode].base_size if crops else V1_MODES[mode].image_size
    assert inputs["pixel_values"].shape == (2, 3, view, view)
    assert inputs["input_ids"][0, 0] == tokenizer.bos_token_id
    # The model checks that the pages' features fill exactly the <image> positions, example by example.
    with torch.no_grad():
        loss = v1_model(**to_model(inputs, *placement(v1_model))).loss
    assert torch.isfinite(loss)


def test_v1_gundam_crops_an_a4_page(tokenizer):
    family = V1Family(tokenizer, "gundam")
    encoded = family.encode_prompt([Image.new("RGB", (1240, 1754), "white")], "Summarize.")
    assert encoded.vision["pixel_values_local"].shape == (6, 3, 640, 640)
    assert encoded.vision["images_spatial_crop"].tolist() == [[2, 3]]
    assert sum(t == family.image_token_id for t in encoded.input_ids) == encoded.num_visual_tokens


def test_v1_refuses_multi_page_examples_and_unknown_modes(tokenizer):
    page = Image.new("RGB", (640, 640), "white")
    with pytest.raises(ValueError, match="one page image per example"):
        V1Family(tokenizer).encode_prompt([page, page], "Summarize.")
    with pytest.raises(ValueError, match="gundam"):
        V1Family(tokenizer, "huge")


def test_freeze_vision_on_v1_freezes_sam_and_clip_only(tiny_v1_dir):
    model = load_model_and_processor(str(tiny_v1_dir)).model
    rows = {row.module: row for row in freeze_vision(model)}
    assert rows["sam_model"].trainable == 0 and rows["vision_model"].trainable == 0
    assert rows["language_model"].trainable == rows["language_model"].parameters > 0
    assert model.model.projector.layers.weight.requires_grad
    freeze_vision(model, include_projector=True)
    assert not model.model.projector.layers.weight.requires_grad and not model.model.view_seperator.requires_grad
