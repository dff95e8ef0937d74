"""Visual-token arithmetic, checked against transformers' real processor, and every recipe's budget."""

from pathlib import Path

import pytest
import yaml
from PIL import Image
from transformers import AutoTokenizer, DeepseekOcr2Processor
from transformers.models.deepseek_ocr2.image_processing_pil_deepseek_ocr2 import DeepseekOcr2ImageProcessorPil

from deepsynth.data.render import LAYOUTS
from deepsynth.model.tokens import PUBLISHED_OCR2, Ocr2Geometry, check_token_budget, layout_visual_tokens
from deepsynth.training.config import config_from_dict, load_config

CONFIGS = sorted(Path("ray_jobs/configs").glob("*.yaml"))


@pytest.fixture(scope="module")
def published_processor(tiny_model_dir):
    """transformers' DeepseekOcr2Processor with its defaults: the published checkpoint's geometry."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    return DeepseekOcr2Processor(image_processor=DeepseekOcr2ImageProcessorPil(), tokenizer=tokenizer)


def image_tokens(processor, width: int, height: int) -> int:
    out = processor(images=[Image.new("RGB", (width, height), "white")], text="<image>\nx", return_tensors="pt")
    return int((out["input_ids"] == processor.image_token_id).sum())


@pytest.mark.parametrize("size", [(768, 768), (1240, 1754), (1754, 1240), (2000, 600), (500, 300)])
def test_the_arithmetic_is_the_real_processors(published_processor, size):
    assert Ocr2Geometry.of(published_processor) == PUBLISHED_OCR2
    assert PUBLISHED_OCR2.visual_tokens(*size) == image_tokens(published_processor, *size)


def test_published_page_costs():
    assert layout_visual_tokens("ocr2-page") == 256 + 1
    assert layout_visual_tokens("ocr2-a4") == 256 + 1 + 6 * 144 == 1121


def test_the_tiny_models_geometry_is_read_from_its_processor(tiny):
    _, processor, family = tiny
    page = LAYOUTS["ocr2-page"]
    assert family.count_visual_tokens(page.width, page.height) == image_tokens(processor, page.width, page.height)


def test_a_budget_that_cannot_hold_the_pages_names_the_numbers_and_the_fix():
    with pytest.raises(ValueError, match=r"max_length=4096 .* max_pages=4 pages of 1121 visual tokens \(4484\).*lower max_pages to 3"):
        check_token_budget(max_pages=4, page_tokens=1121, prompt="Summarize the document.", max_length=4096)
    check_token_budget(max_pages=3, page_tokens=1121, prompt="Summarize the document.", max_length=4096)
    with pytest.raises(ValueError, match="max_length"):
        config_from_dict({"layout": "ocr2-a4", "max_pages": 4, "max_length": 4096})


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_recipe_fits_its_token_budget_on_the_published_checkpoint(path):
    spec = yaml.safe_load(path.read_text())
    if "base_config" in spec:  # a sweep: each trial is the base recipe with the sweep's overrides
        base = yaml.safe_load(Path(spec["base_config"]).read_text())
        config = config_from_dict({**base, **spec["overrides"], "lora_rank": max(spec["ranks"])})
    else:
        config = load_config(path)
    pages = config.max_pages * layout_visual_tokens(config.layout)
    assert pages + len(config.prompt) + 32 < config.max_length


@pytest.mark.parametrize(("size", "useful"), [((4472, 4472), (1536, 1536)), ((1240, 1754), (1240, 1754)),
                                              ((8000, 1000), (4608, 576)), ((6000, 1200), (3840, 768)),
                                              ((500, 300), (500, 300)), ((2000, 1900), (1536, 1459))])
def test_a_page_shrunk_to_its_useful_size_is_seen_the_same_by_the_processor(published_processor, size, useful):
    assert PUBLISHED_OCR2.useful_size(*size) == useful
    original, shrunk = (published_processor(images=[Image.new("RGB", s, "white")], text="<image>\nx",
                                            return_tensors="pt") for s in (size, useful))
    assert original["input_ids"].tolist() == shrunk["input_ids"].tolist()
    assert original["pixel_values"].shape == shrunk["pixel_values"].shape
    assert original.get("pixel_values_local", original["pixel_values"]).shape == \
        shrunk.get("pixel_values_local", shrunk["pixel_values"]).shape
