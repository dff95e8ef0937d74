"""Render plain text to page images.

This is the model-agnostic first step of the pipeline: a document's text becomes a list of
white pages with black text, word-wrapped and paginated. The page sizes come from named
`PageLayout`s that fit the views of the DeepSeek-OCR family (768 px tiles and the 1024 px
global view of OCR-2; v1's tiny/small/base/large/gundam modes), but nothing here knows about
a model or a processor.

Rendering is deterministic: the font is the one embedded in Pillow (no system font is read),
and the same text and layout always give the same pixels.

    pages = render_pages(text, LAYOUTS["ocr2-page"])
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont


@dataclass(frozen=True)
class PageLayout:
    """Size and typography of a rendered page."""

    width: int
    """Page width in pixels."""
    height: int
    """Page height in pixels."""
    font_size: int = 18
    """Font size in pixels. Smaller fonts put more text on a page and raise the compression ratio."""
    margin: int = 24
    """Blank border on every side, in pixels."""
    line_spacing: float = 1.25
    """Line height as a multiple of the font size."""

    def __post_init__(self) -> None:
        if self.width < 64 or self.height < 64:
            raise ValueError(f"PageLayout width/height must be at least 64 px, got {self.width}x{self.height}.")
        if not 6 <= self.font_size <= 200:
            raise ValueError(f"PageLayout font_size must be in [6, 200], got {self.font_size}.")
        if 2 * self.margin + self.font_size >= min(self.width, self.height):
            raise ValueError(
                f"PageLayout margin {self.margin} leaves no room for text on a {self.width}x{self.height} page."
            )
        if self.line_spacing < 1.0:
            raise ValueError(f"PageLayout line_spacing must be >= 1.0, got {self.line_spacing}.")


LAYOUTS: dict[str, PageLayout] = {
    # OCR-2: a page no larger than one 768 px tile gets the global view only (257 visual tokens).
    "ocr2-page": PageLayout(768, 768, font_size=18),
    # OCR-2: an A4 page at 150 dpi; the processor adds up to six 768 px tiles to the global view.
    "ocr2-a4": PageLayout(1240, 1754, font_size=22, margin=72),
    # v1 native resolutions (no tiling) and gundam mode (640 px tiles + a 1024 px global view).
    "v1-tiny": PageLayout(512, 512, font_size=14, margin=16),
    "v1-small": PageLayout(640, 640, font_size=16, margin=20),
    "v1-base": PageLayout(1024, 1024, font_size=20, margin=32),
    "v1-large": PageLayout(1280, 1280, font_size=24, margin=40),
    "v1-gundam": PageLayout(1240, 1754, font_size=22, margin=72),
}


def get_layout(name: str) -> PageLayout:
    """Return the named layout, or raise with the list of known names."""
    try:
        return LAYOUTS[name]
    except KeyError:
        raise ValueError(f"Unknown page layout {name!r}; choose one of {sorted(LAYOUTS)}.") from None


@lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.FreeTypeFont:
    font = ImageFont.load_default(size=size)
    if not isinstance(font, ImageFont.FreeTypeFont):
        raise RuntimeError("Pillow was built without FreeType; install a Pillow wheel from PyPI to render pages.")
    return font


def wrap_lines(text: str, font: ImageFont.FreeTypeFont, max_width: int) -> list[str]:
    """Greedy word wrap. Paragraph breaks are kept; a word wider than the line is split by characters.

    Words are measured once each and lines by summing their widths; a finished line is measured
    whole, and if kerning pushed it past the width its last word moves to the next line. The work
    is linear in the text's length: an overlong word is cut with a search that only measures
    prefixes up to about twice the piece it cuts off, so a hostile 200k-character word costs no
    more than 200k characters of ordinary text.
    """
    space = font.getlength(" ")
    widths: dict[str, float] = {}
    lines: list[str] = []

    def finish(words: list[str]) -> list[str]:
        """Emit `words` as a line; return the words that did not fit after all."""
        carry: list[str] = []
        while len(words) > 1 and font.getlength(" ".join(words)) > max_width:
            carry.insert(0, words.pop())
        lines.append(" ".join(words))
        return carry

    for paragraph in text.replace("\r\n", "\n").split("\n"):
        words: list[str] = []
        width = 0.0
        for word in paragraph.split():
            if word not in widths:
                widths[word] = font.getlength(word)
            if widths[word] > max_width:  # an overlong word gets lines of its own
                if words:
                    words = finish(words)
                cut = _fitting_prefix(word, font, max_width, guess=1)
                while cut < len(word):
                    lines.append(word[:cut])
                    word = word[cut:]
                    cut = _fitting_prefix(word, font, max_width, guess=cut)
                widths[word] = font.getlength(word)
            if words and width + space + widths[word] > max_width:
                words = finish(words)
            words.append(word)
            width = sum(widths[w] for w in words) + space * (len(words) - 1)
        if not words:
            lines.append("")  # an empty paragraph is a blank line
        while words:
            words = finish(words)
    return lines


def _fitting_prefix(word: str, font: ImageFont.FreeTypeFont, max_width: int, guess: int) -> int:
    """The length of the longest prefix of `word` that fits `max_width` (at least 1, so a cut always advances).

    Galloping from `guess` (the previous cut, usually the answer or close to it) and then bisecting
    measures a few prefixes at most about twice as long as the answer, never the whole word.
    """
    def fits(n: int) -> bool:
        return font.getlength(word[:n]) <= max_width

    guess = min(max(guess, 1), len(word))
    step = 1
    if fits(guess):
        low = guess  # the longest prefix known to fit
        while low + step <= len(word) and fits(low + step):
            low, step = low + step, 2 * step
        if low == len(word):
            return low
        high = min(low + step, len(word))  # the shortest prefix known not to fit, once checked
        if high == len(word) and fits(high):
            return high
    else:
        high = guess
        while high - step >= 1 and not fits(high - step):
            high, step = high - step, 2 * step
        low = max(high - step, 1)
    while high - low > 1:
        middle = (low + high) // 2
        if fits(middle):
            low = middle
        else:
            high = middle
    return low


def paginate(text: str, layout: PageLayout) -> list[list[str]]:
    """The lines of each page `text` fills at `layout`, without drawing anything (at least one page)."""
    font = _font(layout.font_size)
    line_height = round(layout.font_size * layout.line_spacing)
    lines = wrap_lines(text, font, layout.width - 2 * layout.margin)
    # Trailing blank lines would otherwise start a page of nothing, which still costs visual tokens.
    while lines and not lines[-1]:
        lines.pop()
    lines_per_page = max(1, (layout.height - 2 * layout.margin) // line_height)
    return [lines[i : i + lines_per_page] for i in range(0, len(lines), lines_per_page)] or [[]]


def count_pages(text: str, layout: PageLayout) -> int:
    """How many pages `render_pages` would draw: the cheap check before deciding to render a document."""
    return len(paginate(text, layout))


def render_pages(
    text: str, layout: PageLayout, max_pages: int | None = None, truncate: bool = False
) -> list[Image.Image]:
    """Render `text` to RGB pages of `layout`'s size, paginating as needed.

    A text that needs more than `max_pages` pages raises ValueError before any page is drawn, or,
    with `truncate`, keeps its first `max_pages` pages. Empty text gives one blank page, so every
    document has at least one image.
    """
    chunks = paginate(text, layout)
    if max_pages is not None and len(chunks) > max_pages:
        if not truncate:
            raise ValueError(
                f"The document needs {len(chunks)} pages at this layout, more than the limit of {max_pages}; "
                "shorten it, raise max_pages, or use a layout with a smaller font."
            )
        chunks = chunks[:max_pages]
    return draw_pages(chunks, layout)


def draw_pages(chunks: list[list[str]], layout: PageLayout,
               before_page: Callable[[], None] | None = None) -> list[Image.Image]:
    """Draw pages whose lines `paginate` already chose (so a caller that checked the page count wraps once).

    `before_page` runs before each page is drawn and may raise to stop (a server's deadline).
    """
    font = _font(layout.font_size)
    line_height = round(layout.font_size * layout.line_spacing)
    pages = []
    for chunk in chunks:
        if before_page is not None:
            before_page()
        page = Image.new("RGB", (layout.width, layout.height), "white")
        draw = ImageDraw.Draw(page)
        for row, line in enumerate(chunk):
            draw.text((layout.margin, layout.margin + row * line_height), line, fill="black", font=font)
        pages.append(page)
    return pages
