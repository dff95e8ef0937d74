"""Request bodies to page images, under the server's limits, with every refusal a `ServingError`.

The body is read as a stream and refused with 413 the moment it passes `max_body_bytes` (a
declared Content-Length over the limit is refused before the first byte is read). Text is
length-checked before it is rendered; files go through `load_document`, which checks sizes,
formats, page counts and pixel counts on metadata before decoding. Nothing here knows about the
model: the pages are plain RGB images.

    body = await read_body(request.headers, request.stream(), config.max_body_bytes)
    pages = text_pages(text, config)   # or file_pages([pdf_bytes], config)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence

from PIL import Image

from deepsynth.data.documents import DocumentError, load_document
from deepsynth.data.render import get_layout, render_pages
from deepsynth.serving.config import ServeConfig
from deepsynth.serving.schemas import ServingError

MAX_ASPECT_RATIO = 100
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


async def limited_stream(stream: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    """Pass `stream` through, raising 413 as soon as more than `limit` bytes have come (chunked uploads)."""
    seen = 0
    async for chunk in stream:
        seen += len(chunk)
        if seen > limit:
            raise too_large(f"The body is more than the limit of {limit:,} bytes; send a smaller document.")
        yield chunk


async def read_body(headers: Mapping[str, str], stream: AsyncIterator[bytes], limit: int) -> bytes:
    check_content_length(headers, limit)
    return b"".join([chunk async for chunk in limited_stream(stream, limit)])


def text_pages(text: str, config: ServeConfig) -> list[Image.Image]:
    """Render text to pages of `config.layout`, refusing text over `max_text_chars` or `max_pages` pages."""
    if len(text) > config.max_text_chars:
        raise too_large(f"The text is {len(text):,} characters, more than the limit of {config.max_text_chars:,}; "
                        "split the document.")
    try:
        return render_pages(text, get_layout(config.layout), max_pages=config.max_pages)
    except ValueError as err:
        raise too_large(str(err)) from None


def file_pages(files: Sequence[bytes], config: ServeConfig) -> list[Image.Image]:
    """One PDF or PNG/JPEG pages to RGB pages, mapping `DocumentError`s to their HTTP status."""
    try:
        pages = load_document(files, config.limits)
    except DocumentError as err:
        raise ServingError(err.status, _ERROR_CODES[err.status], str(err)) from None
    for number, page in enumerate(pages, 1):
        # The processor scales the long side to its view size; a sliver like 3x5000 px would
        # scale its short side to 0 px and fail inside the model replica.
        if max(page.size) > MAX_ASPECT_RATIO * min(page.size):
            raise ServingError(400, "bad_document", f"Page {number} is {page.width}x{page.height} px, more than "
                               f"{MAX_ASPECT_RATIO}:1; send pages of a readable shape.")
    return pages
