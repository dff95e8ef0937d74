"""PDF rendering in a child process that can be killed: the bound on the one call PDFium cannot stop.

PDFium renders a page in a single call, and what that call costs is not bounded by the file's
size: a 17 KB PDF whose page strokes a million lines renders for minutes, and no check between
pages can stop it. A server therefore opens PDFs through a `PdfProcess`: PDFium runs in a child
(`python -m deepsynth.data.pdf_process`) under an address-space limit, the parent waits for each
answer no longer than its caller's time allows, and past that it kills the child and raises
`PdfTimeout`. A child that crashed or was killed is replaced at the next `open`. Each thread that
renders owns its own `PdfProcess` (a child answers one request at a time).

    process = PdfProcess(memory_mb=1024)
    pages = load_pdf_pages(data, limits, open_pdf=lambda data: process.open(data, deadline.remaining))

The child speaks a framed protocol on its stdin and stdout: a JSON header (4-byte length) and a
payload (8-byte length), the PDF's bytes going in and each page's RGB pixels coming out.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import resource
import select
import signal
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import pypdfium2
from PIL import Image

from deepsynth.data.documents import DocumentError

SecondsLeft = Callable[[], float]
"""How long the caller can still wait, in seconds; 0 or less is "no longer"."""

_POLL_S = 0.1
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
_CRASHED = ("The PDF could not be rendered: the renderer ran out of its {memory_mb} MB of memory or crashed on "
            "it. Re-export the PDF (e.g. print it to a new PDF) and send it again.")


class PdfTimeout(TimeoutError):
    """The caller's time ran out while PDFium worked; the child was killed."""


class PdfProcess:
    """One child process that opens PDFs and renders their pages, killed when its caller's time is up."""

    def __init__(self, memory_mb: int = 1024) -> None:
        if memory_mb < 128:
            raise ValueError(f"PdfProcess memory_mb must be at least 128 (PDFium and Python need that), got {memory_mb}.")
        self.memory_mb = memory_mb
        self.child: subprocess.Popen | None = None

    def open(self, data: bytes, seconds_left: SecondsLeft) -> RemotePdf:
        """Open `data` in the child (starting one if needed); every later call on it waits at most `seconds_left()`."""
        if self.child is None or self.child.poll() is not None:
            self._start()
        pdf = RemotePdf(self, seconds_left)
        pdf.count = self.ask({"op": "open"}, data, seconds_left)[0]["pages"]
        return pdf

    def ask(self, header: dict, payload: bytes, seconds_left: SecondsLeft) -> tuple[dict, bytes]:
        """Send one request and wait for its answer; a PDFium error is a `DocumentError` (400)."""
        assert self.child is not None and self.child.stdin is not None and self.child.stdout is not None
        try:
            _write_frame(self.child.stdin, header, payload)
        except (BrokenPipeError, OSError):
            raise self._crashed() from None
        answer, pixels = _read_frame(lambda n: self._read_exact(n, seconds_left))
        if "error" in answer:
            raise DocumentError(answer["error"], status=400)
        return answer, pixels

    def close(self) -> None:
        """Stop the child (idempotent); a later `open` starts a new one."""
        if self.child is not None:
            self.child.kill()
            self.child.wait()
            for stream in (self.child.stdin, self.child.stdout):
                # Closing flushes what a dead child never read: that pipe is broken, and there is nothing to save.
                with contextlib.suppress(OSError):
                    stream.close()
            self.child = None

    def _start(self) -> None:
        self.close()
        # The package's root on the path, so the child finds us wherever the parent was started from.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [_PACKAGE_ROOT, os.environ.get("PYTHONPATH")]))}
        self.child = subprocess.Popen([sys.executable, "-m", "deepsynth.data.pdf_process", str(self.memory_mb)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)

    def _read_exact(self, size: int, seconds_left: SecondsLeft) -> bytes:
        assert self.child is not None and self.child.stdout is not None
        fd, chunks, missing = self.child.stdout.fileno(), [], size
        while missing:
            wait = seconds_left()
            if wait <= 0:
                self.close()
                raise PdfTimeout("PDFium was stopped: the caller's time ran out.")
            # In slices, so a caller whose time is cut short (its client left) is seen within one.
            if not select.select([fd], [], [], min(wait, _POLL_S))[0]:
                continue
            chunk = os.read(fd, min(missing, 1 << 20))
            if not chunk:
                raise self._crashed()
            chunks.append(chunk)
            missing -= len(chunk)
        return b"".join(chunks)

    def _crashed(self) -> DocumentError:
        self.close()
        return DocumentError(_CRASHED.format(memory_mb=self.memory_mb), status=400)


class RemotePdf:
    """An open PDF in a `PdfProcess`: the `PdfReader` that `load_pdf_pages` renders from."""

    def __init__(self, process: PdfProcess, seconds_left: SecondsLeft) -> None:
        self.process = process
        self.seconds_left = seconds_left
        self.count = 0

    def page_count(self) -> int:
        return self.count

    def page_sizes(self) -> list[tuple[float, float]]:
        answer, _ = self.process.ask({"op": "sizes"}, b"", self.seconds_left)
        return [(width, height) for width, height in answer["sizes"]]

    def render(self, index: int, scale: float) -> Image.Image:
        answer, pixels = self.process.ask({"op": "render", "index": index, "scale": scale}, b"", self.seconds_left)
        return Image.frombytes("RGB", (answer["width"], answer["height"]), pixels)

    def close(self) -> None:
        child = self.process.child
        if child is not None and child.poll() is None:  # a killed child holds nothing open
            self.process.ask({"op": "close"}, b"", self.seconds_left)


def _write_frame(stream: BinaryIO, header: dict, payload: bytes) -> None:
    encoded = json.dumps(header).encode()
    stream.write(struct.pack(">I", len(encoded)) + encoded + struct.pack(">Q", len(payload)))
    stream.write(payload)
    stream.flush()


def _read_frame(read_exact: Callable[[int], bytes]) -> tuple[dict, bytes]:
    header = json.loads(read_exact(struct.unpack(">I", read_exact(4))[0]))
    return header, read_exact(struct.unpack(">Q", read_exact(8))[0])


# --- the child ----------------------------------------------------------------------------------


def _serve(memory_mb: int) -> None:
    """Answer requests on stdin until it closes (the parent went away)."""
    # Die with the parent even mid-render (PR_SET_PDEATHSIG = 1); on other systems EOF on stdin ends us.
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)
    limit = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    requests, answers = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing but frames may reach the parent on stdout
    pdf = None

    def read_exact(size: int) -> bytes:
        data = requests.read(size)
        if len(data) < size:
            raise EOFError
        return data

    while True:
        try:
            header, payload = _read_frame(read_exact)
        except EOFError:
            return
        answer, pixels = {}, b""
        try:
            if header["op"] == "open":
                pdf = pypdfium2.PdfDocument(payload)
                answer = {"pages": len(pdf)}
            elif header["op"] == "sizes":
                answer = {"sizes": [pdf.get_page_size(index) for index in range(len(pdf))]}
            elif header["op"] == "render":
                page = pdf[header["index"]]
                try:
                    image = page.render(scale=header["scale"]).to_pil().convert("RGB")
                finally:
                    page.close()
                answer, pixels = {"width": image.width, "height": image.height}, image.tobytes()
            elif header["op"] == "close":
                pdf.close()
                pdf = None
        except pypdfium2.PdfiumError as err:
            answer = {"error": f"The PDF is damaged or not a readable PDF ({err}); send an unencrypted, undamaged "
                               "PDF."}
        _write_frame(answers, answer, pixels)


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
