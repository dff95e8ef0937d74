"""Turn user-supplied files into page images, refusing bad input before it costs memory.

This is the model-agnostic entry point for documents that arrive as files rather than text:
one PDF, or one or more PNG/JPEG images (one page each, in the given order), become a list of
RGB `PIL.Image.Image` pages. The format is read from the file's magic bytes, never from a
filename or content type. Every limit in `DocumentLimits` is checked on the cheap metadata
first (byte length, page count, page size from the PDF or the image header, and the pixels of
all pages together) so a decompression bomb or a 10,000-page PDF is refused before anything is
rendered or decoded. A caller that knows the largest size a page is useful at (a model's views)
passes it as `fit_size`: PDF pages are rendered no larger and images are downscaled to it. A
refusal is a `DocumentError` whose `status` is the HTTP status the server answers with; any
failure of the decoder on a file is one (400), never an exception of Pillow's.

    pages = load_document([request_file_bytes], DocumentLimits(max_pages=16))
"""

from __future__ import annotations

import io
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import pypdfium2
from PIL import Image, ImageOps

ACCEPTED_FORMATS = ("pdf", "png", "jpeg")

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
# PDF readers accept the %PDF- header anywhere in the first 1024 bytes, and some real files
# carry a few bytes of junk before it (mail gateways, broken exporters).
_PDF_HEADER_WINDOW = 1024

# PDFium is not thread-safe (see the pypdfium2 docs) and a server may call us from a thread
# pool, so only one thread at a time touches it in this process.
_PDFIUM_LOCK = threading.Lock()
SizeCheck = Callable[[list[tuple[int, int]]], None]
"""Sees every page's (width, height) in pixels before anything is decoded; raises to refuse the document."""
SizeFit = Callable[[int, int], tuple[int, int]]
"""The size a page of (width, height) pixels is kept at: itself, or smaller with the same shape."""
PageHook = Callable[[], None]
"""Called before each page is rendered or decoded; raises to stop the work (a server's deadline)."""


class DocumentError(ValueError):
    """A document that we refuse; the message says what was wrong and what to do.

    `status` is the HTTP status a server maps this to: 413 for too large (bytes, pages, pixels),
    415 for an unsupported format, 400 for a corrupt or unreadable file.
    """

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status

    def __reduce__(self):
        # Ray ships exceptions between processes by pickling; the default reduce would
        # rebuild from the message alone and lose `status`.
        return (type(self), (str(self), self.status))


@dataclass(frozen=True)
class DocumentLimits:
    """What one request may ask us to decode. The defaults fit a summarization server."""

    max_bytes: int = 32 * 1024 * 1024
    """Largest accepted file, in bytes (per file)."""
    max_pages: int = 64
    """Most pages per document: the pages of the PDF, or the number of image files."""
    max_pixels: int = 40_000_000
    """Most pixels per page after rendering; guards against decompression bombs."""
    max_document_pixels: int = 160_000_000
    """Most pixels rendered or decoded for the whole document, summed over its pages."""
    pdf_dpi: int = 144
    """Resolution PDF pages are rendered at (unless `fit_size` asks for less). 144 dpi turns a US Letter
    page into 1224x1584 px."""

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_pages", "max_pixels", "max_document_pixels"):
            value = getattr(self, name)
            if value < 1:
                raise ValueError(f"DocumentLimits.{name} must be a positive integer, got {value}.")
        if not 36 <= self.pdf_dpi <= 600:
            raise ValueError(
                f"DocumentLimits.pdf_dpi must be in [36, 600], got {self.pdf_dpi}; "
                "144 is a good default for text pages."
            )


def sniff_format(data: bytes) -> str:
    """Return "pdf", "png" or "jpeg" from the file's magic bytes, or raise DocumentError (415)."""
    if data.startswith(_PNG_MAGIC):
        return "png"
    if data.startswith(_JPEG_MAGIC):
        return "jpeg"
    if b"%PDF-" in data[:_PDF_HEADER_WINDOW]:
        return "pdf"
    raise DocumentError(
        f"Unsupported file format; send a PDF, PNG or JPEG file (accepted: {', '.join(ACCEPTED_FORMATS)}).",
        status=415,
    )


class PdfReader(Protocol):
    """An open PDF: its pages' count and sizes (in points), and a page rendered at a scale (pixels per point)."""

    def page_count(self) -> int: ...

    def page_sizes(self) -> list[tuple[float, float]]: ...

    def render(self, index: int, scale: float) -> Image.Image: ...

    def close(self) -> None: ...


PdfOpener = Callable[[bytes], PdfReader]
"""Opens a PDF's bytes: `PdfiumDocument` in this process, or `PdfProcess.open` in a child a server can kill."""


class PdfiumDocument:
    """PDFium in this process, one call at a time under the process-wide lock; errors are `DocumentError`s."""

    def __init__(self, data: bytes) -> None:
        with _PDFIUM_LOCK, _pdfium_errors("The file is not a readable PDF ({err}); send an unencrypted, undamaged PDF."):
            self.pdf = pypdfium2.PdfDocument(data)

    def page_count(self) -> int:
        return len(self.pdf)

    def page_sizes(self) -> list[tuple[float, float]]:
        with _PDFIUM_LOCK, _pdfium_errors("The PDF is damaged ({err}); re-export it and send it again."):
            return [self.pdf.get_page_size(index) for index in range(len(self.pdf))]

    def render(self, index: int, scale: float) -> Image.Image:
        # One page per hold of the lock, so a long PDF does not make every other PDF wait for all of it.
        with _PDFIUM_LOCK, _pdfium_errors("The PDF is damaged ({err}); re-export it and send it again."):
            page = self.pdf[index]
            try:
                return page.render(scale=scale).to_pil().convert("RGB")
            finally:
                page.close()

    def close(self) -> None:
        with _PDFIUM_LOCK:
            self.pdf.close()


def load_pdf_pages(data: bytes, limits: DocumentLimits = DocumentLimits(), check_sizes: SizeCheck | None = None,
                   fit_size: SizeFit | None = None, before_page: PageHook | None = None,
                   open_pdf: PdfOpener = PdfiumDocument) -> list[Image.Image]:
    """Render every page of a PDF to an RGB image at `limits.pdf_dpi`, or smaller where `fit_size` says so.

    The page count and every page's pixel size are checked (and passed to `check_sizes`) before
    the first page is rendered. `open_pdf` is where PDFium runs (a server passes a killable child's).
    """
    _check_bytes(data, limits)
    pdf = open_pdf(data)
    try:
        if pdf.page_count() > limits.max_pages:
            raise DocumentError(
                f"The PDF has {pdf.page_count()} pages, more than the limit of {limits.max_pages}; "
                "split it into smaller documents.",
                status=413,
            )
        points = pdf.page_sizes()
        scales = [_pdf_scale(*size, limits, fit_size) for size in points]
        sizes = [_pdf_pixel_size(*size, scale) for size, scale in zip(points, scales)]
        for index, (width, height) in enumerate(sizes):
            _check_pixels(width, height, limits, f"Page {index + 1} at {round(scales[index] * 72)} dpi")
        _check_document_pixels(sizes, limits)
        if check_sizes is not None:
            check_sizes(sizes)
        pages = []
        for index, scale in enumerate(scales):
            if before_page is not None:
                before_page()
            pages.append(pdf.render(index, scale))
        return pages
    finally:
        pdf.close()


def _pdf_scale(width_pt: float, height_pt: float, limits: DocumentLimits, fit_size: SizeFit | None) -> float:
    """Pixels per point for one page: `limits.pdf_dpi`, lowered so the page is no larger than `fit_size` allows."""
    scale = limits.pdf_dpi / 72  # PDF sizes are in points, 72 to the inch
    if fit_size is None:
        return scale
    width, height = _pdf_pixel_size(width_pt, height_pt, scale)
    fitted_width, fitted_height = fit_size(width, height)
    return scale * min(1.0, fitted_width / width, fitted_height / height)


def _pdf_pixel_size(width_pt: float, height_pt: float, scale: float) -> tuple[int, int]:
    # Same rounding as PdfPage.render, so the checks see the bitmap that would be allocated.
    return max(1, math.ceil(width_pt * scale)), max(1, math.ceil(height_pt * scale))


@contextmanager
def _pdfium_errors(message: str) -> Iterator[None]:
    try:
        yield
    except pypdfium2.PdfiumError as err:
        raise DocumentError(message.format(err=err), status=400) from None


def load_image_page(data: bytes, limits: DocumentLimits = DocumentLimits(),
                    fit_size: SizeFit | None = None) -> Image.Image:
    """Decode one PNG or JPEG file to an upright RGB page, downscaled to `fit_size` if given."""
    return _decode_image(_open_image(data, limits), fit_size)


def load_document(files: Sequence[bytes], limits: DocumentLimits = DocumentLimits(),
                  check_sizes: SizeCheck | None = None, fit_size: SizeFit | None = None,
                  before_page: PageHook | None = None, open_pdf: PdfOpener = PdfiumDocument) -> list[Image.Image]:
    """Turn the files of one document into its pages: one PDF, or one or more images in page order.

    All files are checked (size, format, page count, image headers, the pixels of all pages) before
    any is decoded; `check_sizes`, if given, then sees every page's (width, height) as it will be
    returned (upright, and fitted to `fit_size`) and may raise to refuse the document before any
    decoding work (a server checks its context budget there). `before_page` runs before each page
    is rendered or decoded; `open_pdf` is where PDFium runs.
    """
    if not files:
        raise DocumentError("No files were sent; send one PDF or one or more PNG/JPEG images.", status=400)
    for data in files:
        _check_bytes(data, limits)
    formats = [sniff_format(data) for data in files]
    if "pdf" in formats:
        if len(files) > 1:
            raise DocumentError(
                f"A document is one PDF or one or more images, got {len(files)} files of formats {formats}; "
                "send each PDF as its own document, and images without a PDF.",
                status=400,
            )
        return load_pdf_pages(files[0], limits, check_sizes, fit_size, before_page, open_pdf)
    if len(files) > limits.max_pages:
        raise DocumentError(
            f"The document has {len(files)} pages (one per image), more than the limit of {limits.max_pages}; "
            "split it into smaller documents.",
            status=413,
        )
    # Open every header first so a bomb on the last page is refused before the first is decoded.
    images = [_open_image(data, limits) for data in files]
    _check_document_pixels([image.size for image in images], limits)
    sizes = [_fitted(_upright_size(image), fit_size) for image in images]
    if check_sizes is not None:
        check_sizes(sizes)
    pages = []
    for image in images:
        if before_page is not None:
            before_page()
        pages.append(_decode_image(image, fit_size))
    return pages


def _check_bytes(data: bytes, limits: DocumentLimits) -> None:
    if len(data) > limits.max_bytes:
        raise DocumentError(
            f"The file is {len(data):,} bytes, more than the limit of {limits.max_bytes:,} bytes; "
            "send a smaller file.",
            status=413,
        )


def _check_pixels(width: int, height: int, limits: DocumentLimits, what: str) -> None:
    if width * height > limits.max_pixels:
        raise DocumentError(
            f"{what} is {width}x{height} = {width * height:,} pixels, more than the limit of "
            f"{limits.max_pixels:,} pixels per page; send a smaller page.",
            status=413,
        )


def _check_document_pixels(sizes: Sequence[tuple[int, int]], limits: DocumentLimits) -> None:
    total = sum(width * height for width, height in sizes)
    if total > limits.max_document_pixels:
        raise DocumentError(
            f"The document's {len(sizes)} pages are {total:,} pixels together, more than the limit of "
            f"{limits.max_document_pixels:,} pixels per document; send fewer or smaller pages.",
            status=413,
        )


def _fitted(size: tuple[int, int], fit_size: SizeFit | None) -> tuple[int, int]:
    return size if fit_size is None else fit_size(*size)


def _open_image(data: bytes, limits: DocumentLimits) -> Image.Image:
    """Read only the header of a PNG/JPEG and check its size; the pixels are decoded later."""
    _check_bytes(data, limits)
    image_format = sniff_format(data)
    if image_format == "pdf":
        raise DocumentError("Expected a PNG or JPEG image but got a PDF; send the PDF as its own document.", status=415)
    try:
        with _decoder_errors(image_format.upper()):
            image = Image.open(io.BytesIO(data), formats=[image_format.upper()])
    except Image.DecompressionBombError:
        # Pillow refuses headers above 2 * MAX_IMAGE_PIXELS before we see the size; we know
        # only that bound. Its "DOS attack" wording is not for our users. Smaller images past
        # Pillow's own warning threshold get refused by _check_pixels below, as long as
        # max_pixels stays under Pillow's limit (the default does).
        raise DocumentError(
            f"The image is more than {2 * Image.MAX_IMAGE_PIXELS:,} pixels, more than the limit of "
            f"{limits.max_pixels:,} pixels per page; send a smaller page.",
            status=413,
        ) from None
    _check_pixels(image.width, image.height, limits, "The image")
    return image


@contextmanager
def _decoder_errors(image_format: str) -> Iterator[None]:
    """Any failure of Pillow on the file's bytes is the file's fault: a 400 naming the error, never a 500.

    Pillow's readers raise what the broken part of the file makes them raise: OSError for truncated
    data, SyntaxError for garbled PNG chunks, and struct.error, ValueError, KeyError, TypeError or
    IndexError from EXIF, ICC and palette parsing.
    """
    try:
        yield
    except (DocumentError, Image.DecompressionBombError, MemoryError):
        raise
    except Exception as err:
        raise DocumentError(
            f"The {image_format} file is corrupt or truncated ({type(err).__name__}: {err}); send the original file.",
            status=400,
        ) from None


_TRANSPOSED_ORIENTATIONS = {5, 6, 7, 8}  # EXIF orientations that swap width and height


def _upright_size(image: Image.Image) -> tuple[int, int]:
    """The page size once `exif_transpose` has turned the image upright, read from the header only.

    `Image.getexif` would decode a PNG's pixels to look for EXIF after them, so only the EXIF the
    header holds is read; `_decode_image` fits the size it finds after decoding.
    """
    exif = Image.Exif()
    with _decoder_errors(image.format or "image"):
        exif.load(image.info.get("exif"))
        orientation = exif.get(0x0112)
    return (image.height, image.width) if orientation in _TRANSPOSED_ORIENTATIONS else image.size


def _decode_image(image: Image.Image, fit_size: SizeFit | None) -> Image.Image:
    """The upright RGB page, downscaled to what `fit_size` keeps of its size."""
    # ImageFile.LOAD_TRUNCATED_IMAGES stays False: a truncated file must fail here rather than
    # silently decode to a half-grey page that the model would summarize.
    with _decoder_errors(image.format or "image"):
        image.load()
        image = ImageOps.exif_transpose(image)  # phone photos are stored sideways with an EXIF rotation
        if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
            # A plain convert("RGB") keeps whatever color hides under transparent pixels, often
            # black, which makes black text unreadable; pages are paper, so composite onto white.
            rgba = image.convert("RGBA")
            page = Image.new("RGB", rgba.size, "white")
            page.paste(rgba, mask=rgba.getchannel("A"))
        else:
            page = image.convert("RGB")
        size = _fitted(page.size, fit_size)
        if page.size != size:
            # The model's processor resizes with bicubic too; reducing_gap first halves by box filter, which is fast.
            page = page.resize(size, Image.Resampling.BICUBIC, reducing_gap=2.0)
        return page
