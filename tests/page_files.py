"""Page files as clients upload them: PNG and PDF bytes, and a PNG whose EXIF is garbage."""

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
