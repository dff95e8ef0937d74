"""Page files as clients upload them: PNG and PDF bytes, a PNG whose EXIF is garbage, a PDF slow to render."""

import io
import struct
import zlib

from PIL import Image


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def pdf_bytes(pages: list[Image.Image]) -> bytes:
    buffer = io.BytesIO()
    pages[0].save(buffer, "PDF", save_all=True, append_images=pages[1:], resolution=144)
    return buffer.getvalue()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_with_garbage_exif() -> bytes:
    """A valid PNG whose eXIf chunk is not EXIF: its pixels decode, then EXIF parsing raises."""
    png = png_bytes(Image.new("RGB", (64, 32), "white"))
    at = png.index(b"IEND") - 4
    return png[:at] + png_chunk(b"eXIf", b"garbage!" * 8) + png[at:]


def pdf_of_strokes(strokes: int, pages: int = 1) -> bytes:
    """A PDF of tiny size whose every page strokes `strokes` lines: PDFium renders about 10,000 a
    second and cannot be stopped mid-page (a million strokes compress to a few kilobytes)."""
    content = zlib.compress(b"0.1 w\n" + b"10 10 m 600 780 l S\n" * strokes, 9)
    kids = " ".join(f"{3 + 2 * page} 0 R" for page in range(pages))
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", f"<< /Type /Pages /Kids [{kids}] /Count {pages} >>".encode()]
    for page in range(pages):
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {4 + 2 * page} 0 R >>"
                       .encode())
        objects.append(b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(content) + content + b"\nendstream")
    out, offsets = io.BytesIO(), []
    out.write(b"%PDF-1.4\n")
    for number, body in enumerate(objects, 1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % number + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    out.write(b"".join(b"%010d 00000 n \n" % offset for offset in offsets))
    out.write(b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref))
    return out.getvalue()
