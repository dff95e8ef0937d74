"""Tests for deepsynth.data.documents on real PDF, PNG and JPEG bytes built in memory."""

import io
import pickle
import struct
import zlib

import pypdfium2
import pytest
from PIL import Image

from deepsynth.data.documents import (
    DocumentError,
    DocumentLimits,
    load_document,
    load_image_page,
    load_pdf_pages,
    sniff_format,
)


def _pdf(*page_sizes: tuple[float, float]) -> bytes:
    """A real PDF with blank pages of the given sizes in points."""
    pdf = pypdfium2.PdfDocument.new()
    for width, height in page_sizes:
        pdf.new_page(width, height).close()
    buffer = io.BytesIO()
    pdf.save(buffer)
    pdf.close()
    return buffer.getvalue()


def _encode(image: Image.Image, image_format: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **params)
    return buffer.getvalue()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _noise_jpeg() -> bytes:
    # Noise does not compress, so half the file is missing half the scan lines.
    return _encode(Image.effect_noise((256, 256), 64).convert("RGB"), "JPEG", quality=90)


@pytest.fixture(scope="module")
def huge_png() -> bytes:
    """A valid 30000x30000 1-bit PNG: 900 million pixels in about 100 kB, the shape of a decompression bomb."""
    side = 30_000
    compressor = zlib.compressobj(9)
    row = b"\x00" * (1 + side // 8)  # filter byte + 1 bit per pixel
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit grayscale
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def ten_thousand_giant_pages() -> bytes:
    # Giant pages: if pages were measured or rendered before being counted, the error would be
    # the pixel one (or the test would run out of memory), not the page count.
    return _pdf(*[(14_400, 14_400)] * 10_000)


# --- DocumentLimits and sniff_format ---------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [("max_bytes", 0), ("max_pages", -1), ("max_pixels", 0), ("pdf_dpi", 35), ("pdf_dpi", 601)],
)
def test_limits_reject_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"DocumentLimits.{field} must be"):
        DocumentLimits(**{field: value})


def test_limits_accept_the_edges_of_the_dpi_range():
    assert DocumentLimits(pdf_dpi=36).pdf_dpi == 36
    assert DocumentLimits(pdf_dpi=600).pdf_dpi == 600


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (_pdf((100, 100)), "pdf"),
        (b"\xef\xbb\xbf\r\n" + _pdf((100, 100)), "pdf"),  # junk before the header, as PDF readers allow
        (_encode(Image.new("RGB", (8, 8)), "PNG"), "png"),
        (_encode(Image.new("RGB", (8, 8)), "JPEG"), "jpeg"),
    ],
)
def test_sniff_format_reads_magic_bytes(data, expected):
    assert sniff_format(data) == expected


@pytest.mark.parametrize(
    "data",
    [
        b"hello world",
        b"PK\x03\x04" + b"\x00" * 100,  # zip, e.g. a .docx
        _encode(Image.new("RGB", (8, 8)), "GIF"),
        b"",
    ],
)
def test_sniff_format_refuses_other_files_naming_the_accepted_formats(data):
    with pytest.raises(DocumentError, match="PDF, PNG or JPEG") as err:
        sniff_format(data)
    assert err.value.status == 415


# --- PDF ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dpi", "expected_sizes"),
    [(144, [(1224, 1584), (600, 400)]), (72, [(612, 792), (300, 200)])],
)
def test_load_pdf_pages_renders_every_page_at_the_dpi(dpi, expected_sizes):
    pages = load_pdf_pages(_pdf((612, 792), (300, 200)), DocumentLimits(pdf_dpi=dpi))

    assert [page.size for page in pages] == expected_sizes
    assert all(page.mode == "RGB" for page in pages)
    assert pages[0].getpixel((10, 10)) == (255, 255, 255)  # blank page renders white


def test_pdf_pixel_check_sees_the_size_render_allocates():
    letter = _pdf((612, 792))  # 1224x1584 px at 144 dpi

    assert len(load_pdf_pages(letter, DocumentLimits(max_pixels=1224 * 1584))) == 1
    with pytest.raises(DocumentError, match="1224x1584") as err:
        load_pdf_pages(letter, DocumentLimits(max_pixels=1224 * 1584 - 1))
    assert err.value.status == 413


def test_giant_pdf_page_is_refused_by_the_pixel_check():
    # 14400 pt (200 in) squared at 144 dpi would be a 3.3 GB bitmap.
    with pytest.raises(DocumentError) as err:
        load_pdf_pages(_pdf((612, 792), (14_400, 14_400)))

    assert err.value.status == 413
    assert "Page 2 at 144 dpi is 28800x28800" in str(err.value)
    assert "limit of 40,000,000 pixels per page" in str(err.value)


def test_pdf_with_too_many_pages_is_refused_before_any_page_is_measured(ten_thousand_giant_pages):
    with pytest.raises(DocumentError) as err:
        load_pdf_pages(ten_thousand_giant_pages)

    assert err.value.status == 413
    assert "10000 pages, more than the limit of 64" in str(err.value)


@pytest.mark.parametrize(
    "data",
    [
        b"%PDF-1.7\n" + b"this is not a pdf body\n" * 20,
        _pdf(),  # a PDF without pages, which PDFium refuses to open
        _pdf((612, 792))[:200],  # truncated
    ],
)
def test_unreadable_pdf_is_400(data):
    with pytest.raises(DocumentError, match="not a readable PDF") as err:
        load_pdf_pages(data)
    assert err.value.status == 400


# --- images ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["RGB", "L", "P", "1", "CMYK"])
def test_load_image_page_returns_rgb_with_the_colors_of_the_file(mode):
    image = Image.new("RGB", (30, 20), (255, 255, 255))
    image.paste((0, 0, 0), (0, 0, 10, 20))  # left third black
    image_format = "JPEG" if mode == "CMYK" else "PNG"

    page = load_image_page(_encode(image.convert(mode), image_format))

    assert page.mode == "RGB"
    assert page.size == (30, 20)
    assert max(page.getpixel((2, 10))) < 30  # black stays black (JPEG is lossy)
    assert min(page.getpixel((25, 10))) > 225


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display", as phones write it
    stored = _encode(Image.new("RGB", (40, 20), "red"), "JPEG", exif=exif)

    assert load_image_page(stored).size == (20, 40)


def test_transparent_png_is_composited_on_white():
    image = Image.new("RGBA", (20, 20), (0, 0, 0, 0))  # transparent black, as many tools write it
    image.paste((0, 0, 0, 255), (5, 5, 15, 15))

    page = load_image_page(_encode(image, "PNG"))

    assert page.getpixel((0, 0)) == (255, 255, 255)
    assert page.getpixel((10, 10)) == (0, 0, 0)


def test_huge_png_gets_our_413_not_pillows_bomb_error(huge_png):
    assert len(huge_png) < 200_000  # the point: a tiny file that claims a huge page

    with pytest.raises(DocumentError) as err:
        load_image_page(huge_png)

    assert err.value.status == 413
    assert "pixels per page" in str(err.value)
    assert "DOS attack" not in str(err.value)


def test_image_over_max_pixels_is_refused_from_the_header_before_decoding():
    # A truncated file: decoding it would fail with 400, so a 413 shows the check came first.
    truncated = _noise_jpeg()[:3000]

    with pytest.raises(DocumentError) as err:
        load_image_page(truncated, DocumentLimits(max_pixels=256 * 256 - 1))

    assert err.value.status == 413
    assert "256x256 = 65,536 pixels, more than the limit of 65,535" in str(err.value)


def test_truncated_jpeg_is_400():
    data = _noise_jpeg()

    with pytest.raises(DocumentError, match="corrupt or truncated") as err:
        load_image_page(data[: len(data) // 2])
    assert err.value.status == 400


def test_png_with_a_broken_chunk_is_400():
    # Pillow raises SyntaxError, not OSError, for a garbled chunk between two IDATs.
    pixels = zlib.compress(b"".join(b"\x00" + bytes(range(64)) for _ in range(64)))
    half = len(pixels) // 2
    data = (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 64, 64, 8, 0, 0, 0, 0))
        + _png_chunk(b"IDAT", pixels[:half])
        + _png_chunk(b"I?AT", pixels[half:])
        + _png_chunk(b"IEND", b"")
    )

    with pytest.raises(DocumentError, match="corrupt or truncated") as err:
        load_image_page(data)
    assert err.value.status == 400


def test_image_with_a_broken_header_is_400():
    with pytest.raises(DocumentError, match="corrupt or truncated") as err:
        load_image_page(b"\x89PNG\r\n\x1a\n" + b"junk" * 10)
    assert err.value.status == 400


def test_pdf_given_as_an_image_is_415():
    with pytest.raises(DocumentError, match="got a PDF") as err:
        load_image_page(_pdf((100, 100)))
    assert err.value.status == 415


# --- byte limit -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "load",
    [load_image_page, load_pdf_pages, lambda data, limits: load_document([data], limits)],
    ids=["image", "pdf", "document"],
)
def test_oversized_file_is_413_before_its_format_is_read(load):
    # Not a PDF or an image either: the byte check must come first and answer 413, not 415.
    with pytest.raises(DocumentError, match="32 bytes, more than the limit of 31 bytes") as err:
        load(b"x" * 32, DocumentLimits(max_bytes=31))
    assert err.value.status == 413


# --- load_document --------------------------------------------------------------------------


def test_load_document_keeps_the_order_of_the_images():
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    files = [_encode(Image.new("RGB", (10 + i, 10), color), "PNG") for i, color in enumerate(colors)]

    pages = load_document(files)

    assert [page.getpixel((0, 0)) for page in pages] == colors
    assert [page.width for page in pages] == [10, 11, 12]


def test_load_document_renders_a_single_pdf():
    pages = load_document([_pdf((612, 792), (612, 792), (300, 200))])

    assert [page.size for page in pages] == [(1224, 1584), (1224, 1584), (600, 400)]


@pytest.mark.parametrize(
    "files",
    [
        [_pdf((100, 100)), _encode(Image.new("RGB", (8, 8)), "PNG")],
        [_encode(Image.new("RGB", (8, 8)), "PNG"), _pdf((100, 100))],
        [_pdf((100, 100)), _pdf((100, 100))],
    ],
    ids=["pdf-then-png", "png-then-pdf", "two-pdfs"],
)
def test_load_document_refuses_a_pdf_with_other_files(files):
    with pytest.raises(DocumentError, match="one PDF or one or more images") as err:
        load_document(files)
    assert err.value.status == 400


def test_load_document_refuses_no_files():
    with pytest.raises(DocumentError, match="No files") as err:
        load_document([])
    assert err.value.status == 400


def test_load_document_refuses_an_unsupported_file_among_images():
    with pytest.raises(DocumentError, match="PDF, PNG or JPEG") as err:
        load_document([_encode(Image.new("RGB", (8, 8)), "PNG"), b"hello world"])
    assert err.value.status == 415


def test_load_document_counts_pages_before_decoding_any():
    truncated = _noise_jpeg()[:3000]  # decoding this first would give 400

    with pytest.raises(DocumentError) as err:
        load_document([truncated] * 3, DocumentLimits(max_pages=2))

    assert err.value.status == 413
    assert "3 pages (one per image), more than the limit of 2" in str(err.value)


def test_load_document_checks_every_header_before_decoding_any(huge_png):
    truncated = _noise_jpeg()[:3000]  # decoding this first would give 400

    with pytest.raises(DocumentError, match="pixels per page") as err:
        load_document([truncated, huge_png])
    assert err.value.status == 413


def test_load_document_applies_the_page_limit_to_pdfs(ten_thousand_giant_pages):
    with pytest.raises(DocumentError, match="10000 pages, more than the limit of 5000") as err:
        load_document([ten_thousand_giant_pages], DocumentLimits(max_pages=5000))
    assert err.value.status == 413


def test_document_error_keeps_its_status_through_pickle():
    # Ray pickles exceptions raised in tasks and replicas.
    error = pickle.loads(pickle.dumps(DocumentError("too big", status=413)))

    assert (str(error), error.status) == ("too big", 413)


# --- decoding errors, the document's pixel budget, fitting and stopping ---------------------


def _png_with_exif(exif: bytes, before_pixels: bool) -> bytes:
    png = _encode(Image.new("RGB", (32, 16), "red"), "PNG")
    chunk = _png_chunk(b"eXIf", exif)
    at = png.index(b"IDAT") - 4 if before_pixels else png.index(b"IEND") - 4
    return png[:at] + chunk + png[at:]


@pytest.mark.parametrize("before_pixels", [True, False])
def test_a_png_with_a_garbage_exif_chunk_is_400(before_pixels):
    # exif_transpose raises SyntaxError ("not a TIFF file") for it, after the pixels decoded fine.
    with pytest.raises(DocumentError, match="corrupt or truncated") as err:
        load_document([_png_with_exif(b"garbage!" * 8, before_pixels)])
    assert err.value.status == 400


@pytest.mark.parametrize("exif", [b"MM\x00*\x00\x00\x00\x08\xff\xff", b"II*\x00" + b"\xff" * 12])
def test_exif_that_pillow_can_skip_still_gives_the_page(exif):
    (page,) = load_document([_png_with_exif(exif, before_pixels=True)])
    assert page.size == (32, 16)


def test_a_jpeg_with_garbage_exif_is_400():
    jpeg = _encode(Image.new("RGB", (32, 16), "red"), "JPEG")
    app1 = b"Exif\x00\x00" + b"garbage!" * 8
    data = jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + jpeg[2:]
    with pytest.raises(DocumentError, match="corrupt or truncated") as err:
        load_document([data])
    assert err.value.status == 400


def test_the_pixels_of_all_pages_together_are_limited_before_decoding():
    page = _encode(Image.new("RGB", (100, 100), "white"), "PNG")
    limits = DocumentLimits(max_document_pixels=3 * 100 * 100)
    assert len(load_document([page] * 3, limits)) == 3
    with pytest.raises(DocumentError, match="4 pages are 40,000 pixels together") as err:
        load_document([page] * 4, limits, check_sizes=lambda sizes: pytest.fail("checked sizes past the budget"))
    assert err.value.status == 413
    with pytest.raises(DocumentError, match="pixels per document") as err:
        load_document([_pdf(*[(612, 792)] * 4)], DocumentLimits(max_document_pixels=3 * 1224 * 1584))
    assert err.value.status == 413


def _half_longest_side_over_300(width: int, height: int) -> tuple[int, int]:
    if max(width, height) <= 300:
        return width, height
    return (300, round(height * 300 / width)) if width >= height else (round(width * 300 / height), 300)


def test_fit_size_renders_pdf_pages_no_larger_and_downscales_images():
    seen = []
    pages = load_document([_pdf((612, 792), (100, 50))], fit_size=_half_longest_side_over_300, check_sizes=seen.append)
    assert [page.size for page in pages] == seen[0] == [(232, 300), (200, 100)]
    # A giant page is rendered at the fitted size, so the per-page limit sees that size.
    (giant,) = load_pdf_pages(_pdf((14_400, 14_400)), DocumentLimits(max_pixels=300 * 300),
                              fit_size=_half_longest_side_over_300)
    assert giant.size == (300, 300)

    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: upright it is 400 wide and 800 high
    photo = _encode(Image.new("RGB", (800, 400), "red"), "JPEG", exif=exif)
    small = _encode(Image.new("RGB", (40, 20), "blue"), "PNG")
    seen.clear()
    pages = load_document([photo, small], fit_size=_half_longest_side_over_300, check_sizes=seen.append)
    assert [page.size for page in pages] == seen[0] == [(150, 300), (40, 20)]
    assert pages[0].getpixel((75, 150))[0] > 200 and pages[1].getpixel((5, 5)) == (0, 0, 255)


def test_before_page_runs_before_each_page_and_can_stop_the_work():
    class Stop(Exception):
        pass

    calls = []

    def before_page():
        calls.append(len(calls))
        if len(calls) == 2:
            raise Stop

    page = _encode(Image.new("RGB", (10, 10)), "PNG")
    for files in ([page] * 3, [_pdf(*[(100, 100)] * 3)]):
        calls.clear()
        with pytest.raises(Stop):
            load_document(files, before_page=before_page)
        assert calls == [0, 1]
