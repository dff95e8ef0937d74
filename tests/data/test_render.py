import numpy as np
import pytest

from deepsynth.data.render import LAYOUTS, PageLayout, get_layout, render_pages, wrap_lines, _font


def pixels(page):
    return np.asarray(page)


def test_rendering_is_deterministic():
    text = "Energy costs rose in the northern region. " * 40
    first = render_pages(text, LAYOUTS["ocr2-page"])
    second = render_pages(text, LAYOUTS["ocr2-page"])
    assert len(first) == len(second)
    for a, b in zip(first, second):
        assert np.array_equal(pixels(a), pixels(b))


def test_different_text_gives_different_pixels():
    a = render_pages("Energy costs rose.", LAYOUTS["ocr2-page"])[0]
    b = render_pages("Housing prices fell.", LAYOUTS["ocr2-page"])[0]
    assert not np.array_equal(pixels(a), pixels(b))


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_pages_have_the_layout_size_and_ink(name):
    layout = LAYOUTS[name]
    page = render_pages("Some words on a page.", layout)[0]
    assert page.size == (layout.width, layout.height)
    assert page.mode == "RGB"
    ink = pixels(page).min(axis=2) < 128
    assert ink.any(), "text was drawn"
    rows, cols = np.nonzero(ink)
    assert rows.min() >= layout.margin - 2 and cols.min() >= layout.margin - 2, "text stays inside the margin"


def test_long_documents_are_paginated_and_keep_every_line():
    layout = PageLayout(256, 256, font_size=16, margin=16)
    text = "\n".join(f"line {i}" for i in range(100))
    pages = render_pages(text, layout)
    lines_per_page = (layout.height - 2 * layout.margin) // round(layout.font_size * layout.line_spacing)
    assert len(pages) == -(-100 // lines_per_page)
    # The last page holds the remainder: ink stops before its bottom margin area fills up.
    last_ink_rows = np.nonzero(pixels(pages[-1]).min(axis=2) < 128)[0]
    remainder = 100 - lines_per_page * (len(pages) - 1)
    assert last_ink_rows.max() < layout.margin + remainder * round(layout.font_size * layout.line_spacing)


def test_wrapping_respects_the_width_and_splits_overlong_words():
    font = _font(16)
    lines = wrap_lines("short words here " * 20 + "x" * 300, font, 200)
    assert all(font.getlength(line) <= 200 for line in lines)
    assert "".join(lines).replace(" ", "").count("x") == 300


def test_empty_text_gives_one_blank_page():
    (page,) = render_pages("", LAYOUTS["ocr2-page"])
    assert pixels(page).min() == 255


def test_max_pages_is_checked_before_drawing():
    with pytest.raises(ValueError, match="needs .* pages .* limit of 2"):
        render_pages("word " * 20000, LAYOUTS["ocr2-page"], max_pages=2)


def test_layout_validation_names_the_field():
    with pytest.raises(ValueError, match="font_size"):
        PageLayout(768, 768, font_size=2)
    with pytest.raises(ValueError, match="margin"):
        PageLayout(128, 128, margin=60)
    with pytest.raises(ValueError, match="ocr2-page"):
        get_layout("letter")
