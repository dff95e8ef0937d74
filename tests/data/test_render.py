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


class _CountingFont:
    """The real font, counting the characters every `getlength` call measures."""

    def __init__(self, font):
        self.font = font
        self.measured = 0

    def getlength(self, text: str) -> float:
        self.measured += len(text)
        return self.font.getlength(text)


@pytest.mark.parametrize("text", ["x" * 2000, "x" * 200_000, "iW" * 50_000, "word " * 40_000,
                                  ("y" * 5000 + " short words ") * 20])
def test_wrapping_measures_a_bounded_multiple_of_the_text(text):
    font = _CountingFont(_font(18))
    lines = wrap_lines(text, font, 720)
    assert "".join(lines).replace(" ", "") == text.replace(" ", "")
    # Each word is measured whole once and each cut of an overlong word a few times near its own
    # length; the old search measured O(word length) prefixes per cut, cubic in the word's length.
    assert font.measured <= 8 * len(text), font.measured / len(text)


@pytest.mark.parametrize("word", ["x" * 2000, "iW" * 700, "Wé" * 300 + "i" * 400])
def test_an_overlong_word_is_cut_into_the_longest_prefixes_that_fit(word):
    font = _font(18)
    lines = wrap_lines(f"before {word}", font, 300)
    assert lines[0] == "before" and "".join(lines[1:]) == word
    rest = word
    for piece in lines[1:-1]:  # every cut but the last piece, which is what was left
        assert font.getlength(piece) <= 300 and font.getlength(rest[: len(piece) + 1]) > 300
        rest = rest[len(piece):]
    assert font.getlength(rest) <= 300
