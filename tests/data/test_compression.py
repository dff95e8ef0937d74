import pytest
from PIL import Image

from deepsynth.data.compression import compression_stats
from deepsynth.data.render import PageLayout, render_pages


def processor_image_tokens(processor, page):
    out = processor(images=[page], text="<image>\n", return_tensors="pt")
    return int((out["input_ids"] == processor.image_token_id).sum())


@pytest.mark.parametrize("size", [(768, 768), (1240, 1754), (3000, 500), (500, 3000), (1024, 1024), (200, 300)])
def test_visual_token_count_matches_the_processor(tiny, size):
    _, processor, family = tiny
    page = Image.new("RGB", size, "white")
    assert family.count_visual_tokens(*size) == processor_image_tokens(processor, page)


def test_compression_stats_for_a_document(tiny, corpus_examples):
    _, processor, family = tiny
    doc = corpus_examples[0]
    stats = compression_stats(doc["text"], doc["pages"], family)
    assert stats.pages == 1
    assert stats.visual_tokens == 145  # one 768 px page: the tiny model's 12x12 global view and the separator
    assert stats.text_tokens == len(processor.tokenizer.encode(doc["text"], add_special_tokens=False))
    assert stats.ratio == pytest.approx(stats.text_tokens / 145)
    assert stats.to_dict()["ratio"] == stats.ratio


def test_smaller_type_fits_more_text_per_visual_token(tiny, corpus_examples):
    _, _, family = tiny
    text = corpus_examples[0]["text"] * 4
    small = compression_stats(text, render_pages(text, PageLayout(768, 768, font_size=12)), family)
    large = compression_stats(text, render_pages(text, PageLayout(768, 768, font_size=24)), family)
    assert small.text_tokens == large.text_tokens
    assert small.pages < large.pages and small.visual_tokens < large.visual_tokens
    assert small.ratio > large.ratio


def test_no_pages_is_an_error(tiny):
    with pytest.raises(ValueError, match="at least one page"):
        compression_stats("text", [], tiny.family)
