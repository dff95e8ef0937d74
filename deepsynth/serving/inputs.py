"""Request bodies to page images, under the server's limits, with every refusal a `ServingError`.

The body is read as a stream and refused with 413 the moment it passes `max_body_bytes` (a
declared Content-Length over the limit is refused before the first byte is read), and with 408
when its next chunk takes longer than `body_timeout_s`. Text is
length-checked and paginated before it is rendered; files go through `load_document`, which
checks sizes, formats, page counts and pixel counts on metadata before decoding. Pages are never larger
than the model can use (`fit_size`, the family's `useful_size`), and `before_page` (the request's
deadline) runs before each one is drawn or decoded. Before any
rendering or decoding, `ContextBudget` refuses a document whose visual tokens, prompt and
summary cannot fit the decoder's positions (16 A4 pages are about 17.9k visual tokens, more
than DeepSeek-OCR-2's 8192).

    body = await read_body(request.headers, request.stream(), config.max_body_bytes, config.body_timeout_s)
    budget = ContextBudget(family, context_length(model))
    pages = text_pages(text, "ocr2-page", config, lambda sizes: budget.check(sizes, prompt, max_new_tokens),
                       deadline.check)
"""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass

from PIL import Image

from deepsynth.data.documents import DocumentError, PageHook, PdfOpener, SizeCheck, SizeFit, load_document
from deepsynth.data.render import draw_pages, get_layout, paginate
from deepsynth.model.families import IMAGE_TOKEN, ModelFamily
from deepsynth.serving.config import ServeConfig
from deepsynth.serving.schemas import ServingError

MAX_ASPECT_RATIO = 100
PREVIEW_SIDE = 256
"""Longest side of a page preview, in pixels."""
PREVIEW_QUALITY = 80
_ERROR_CODES = {400: "bad_document", 413: "payload_too_large", 415: "unsupported_media_type"}


def too_large(detail: str) -> ServingError:
    return ServingError(413, "payload_too_large", detail)


def check_content_length(headers: Mapping[str, str], limit: int) -> None:
    """Refuse a body whose declared length is over `limit` before reading it."""
    declared = headers.get("content-length")
    if declared is None:
        return
    if not declared.isdigit():
        raise ServingError(400, "invalid_request", f"Content-Length {declared!r} is not a number.")
    if int(declared) > limit:
        raise too_large(f"The body is {int(declared):,} bytes, more than the limit of {limit:,} bytes; "
                        "send a smaller document.")


async def limited_stream(stream: AsyncIterator[bytes], limit: int, timeout_s: float) -> AsyncIterator[bytes]:
    """Pass `stream` through, raising 413 as soon as more than `limit` bytes have come (chunked uploads),
    and 408 when the next chunk does not come within `timeout_s` (a client that trickles its body)."""
    seen = 0
    chunks = aiter(stream)
    while True:
        try:
            chunk = await asyncio.wait_for(anext(chunks), timeout=timeout_s)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise ServingError(408, "request_timeout", f"The body stalled for more than {timeout_s:g} s; send it "
                               "without pauses.") from None
        seen += len(chunk)
        if seen > limit:
            raise too_large(f"The body is more than the limit of {limit:,} bytes; send a smaller document.")
        yield chunk


async def read_body(headers: Mapping[str, str], stream: AsyncIterator[bytes], limit: int, timeout_s: float) -> bytes:
    check_content_length(headers, limit)
    return b"".join([chunk async for chunk in limited_stream(stream, limit, timeout_s)])


@dataclass(frozen=True)
class ContextBudget:
    """The decoder's positions, against which a request's prompt and summary are checked before any rendering."""

    family: ModelFamily
    context: int
    """`max_position_embeddings` of the served model's decoder."""

    def check(self, page_sizes: Sequence[tuple[int, int]], prompt: str, max_new_tokens: int) -> None:
        """Raise 413 unless pages of these sizes, the prompt and `max_new_tokens` fit the context."""
        visual = sum(self.family.count_visual_tokens(width, height) for width, height in page_sizes)
        # The processor's text: BOS, one placeholder and newline per page, the prompt; placeholders become `visual`.
        prompt_tokens = len(self.family.tokenizer(f"{IMAGE_TOKEN}\n" * len(page_sizes) + prompt)["input_ids"])
        prompt_tokens -= len(page_sizes)
        total = visual + prompt_tokens + max_new_tokens
        if total > self.context:
            raise ServingError(413, "context_length_exceeded", (
                f"The document's {len(page_sizes)} pages are {visual:,} visual tokens; with the prompt "
                f"({prompt_tokens} tokens) and max_new_tokens={max_new_tokens} that is {total:,} tokens, more than "
                f"the model's {self.context:,} positions. Send fewer or smaller pages, or lower max_new_tokens."))


def text_pages(text: str, layout: str, config: ServeConfig, check_sizes: SizeCheck,
               before_page: PageHook) -> list[Image.Image]:
    """Render text to pages of `layout`, refusing text over `max_text_chars` or `max_pages` pages, or that
    `check_sizes` refuses, before drawing anything; `before_page` runs before each page is drawn."""
    if len(text) > config.max_text_chars:
        raise too_large(f"The text is {len(text):,} characters, more than the limit of {config.max_text_chars:,}; "
                        "split the document.")
    page_layout = get_layout(layout)
    chunks = paginate(text, page_layout)
    if len(chunks) > config.max_pages:
        raise too_large(f"The document needs {len(chunks)} pages at layout {layout}, more than this server's limit "
                        f"of {config.max_pages}; split it into smaller documents.")
    check_sizes([(page_layout.width, page_layout.height)] * len(chunks))
    return draw_pages(chunks, page_layout, before_page)


def file_pages(files: Sequence[bytes], config: ServeConfig, check_sizes: SizeCheck, fit_size: SizeFit,
               before_page: PageHook, open_pdf: PdfOpener) -> list[Image.Image]:
    """One PDF or PNG/JPEG pages to RGB pages no larger than `fit_size` keeps, mapping `DocumentError`s to
    their HTTP status; `check_sizes` sees the pages' sizes before any is decoded, `before_page` runs before
    each page is rendered or decoded, and `open_pdf` is where PDFium runs (the server's killable child)."""
    try:
        pages = load_document(files, config.limits, check_sizes, fit_size, before_page, open_pdf)
    except DocumentError as err:
        raise ServingError(err.status, _ERROR_CODES[err.status], str(err)) from None
    for number, page in enumerate(pages, 1):
        # The processor scales the long side to its view size; a sliver like 3x5000 px would
        # scale its short side to 0 px and fail inside the model replica.
        if max(page.size) > MAX_ASPECT_RATIO * min(page.size):
            raise ServingError(400, "bad_document", f"Page {number} is {page.width}x{page.height} px, more than "
                               f"{MAX_ASPECT_RATIO}:1; send pages of a readable shape.")
    return pages


def page_previews(pages: Sequence[Image.Image], max_side: int = PREVIEW_SIDE) -> list[str]:
    """Each page scaled down to at most `max_side` pixels on its longest side (aspect kept, never enlarged), as a
    JPEG data URL: a few kB a page, whatever the page's size."""
    previews = []
    for page in pages:
        small = page.convert("RGB")
        small.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        small.save(buffer, "JPEG", quality=PREVIEW_QUALITY)
        previews.append("data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode())
    return previews
