"""PDFium in a child process: the same pages as in this process, stopped mid-page when time is up."""

import os
import time

import pytest
from PIL import Image, ImageChops

from deepsynth.data.documents import DocumentError, DocumentLimits, load_pdf_pages
from deepsynth.data.pdf_process import PdfProcess, PdfTimeout
from page_files import pdf_bytes, pdf_of_strokes


def _forever() -> float:
    return 60.0


@pytest.fixture
def process():
    process = PdfProcess(memory_mb=1024)
    yield process
    process.close()


def _two_pages() -> bytes:
    first = Image.new("RGB", (600, 800), "white")
    first.paste((200, 30, 30), (50, 60, 300, 200))
    second = Image.linear_gradient("L").convert("RGB").resize((500, 700))
    return pdf_bytes([first, second])


def test_the_child_renders_the_same_pixels_as_pdfium_in_this_process(process):
    data = _two_pages()
    limits = DocumentLimits(pdf_dpi=100)
    here = load_pdf_pages(data, limits)
    there = load_pdf_pages(data, limits, open_pdf=lambda pdf: process.open(pdf, _forever))
    assert [page.size for page in there] == [page.size for page in here] and len(here) == 2
    assert all(ImageChops.difference(a, b).getbbox() is None for a, b in zip(here, there))
    # One child serves one document after another.
    assert len(load_pdf_pages(data, limits, open_pdf=lambda pdf: process.open(pdf, _forever))) == 2


def test_a_page_that_renders_for_minutes_is_stopped_when_time_is_up_and_the_next_pdf_renders(process):
    slow = pdf_of_strokes(1_000_000)  # 48 KB; PDFium alone would draw it for about 3 minutes
    assert len(slow) < 64 * 1024
    ends = time.monotonic() + 0.5
    started = time.monotonic()
    with pytest.raises(PdfTimeout):
        load_pdf_pages(slow, open_pdf=lambda pdf: process.open(pdf, lambda: ends - time.monotonic()))
    assert time.monotonic() - started < 1.5
    assert process.child is None  # killed, not left drawing
    assert len(load_pdf_pages(_two_pages(), open_pdf=lambda pdf: process.open(pdf, _forever))) == 2


def test_damaged_pdfs_and_a_dead_child_are_400s_and_the_next_pdf_renders(process):
    with pytest.raises(DocumentError) as err:
        load_pdf_pages(b"%PDF-1.4\n garbage", open_pdf=lambda pdf: process.open(pdf, _forever))
    assert err.value.status == 400 and "PDF" in str(err.value)
    pdf = process.open(_two_pages(), _forever)
    os.kill(process.child.pid, 9)  # what the kernel does to a child past its memory
    with pytest.raises(DocumentError) as err:
        pdf.page_sizes()
    assert err.value.status == 400 and "1024 MB" in str(err.value)
    assert len(load_pdf_pages(_two_pages(), open_pdf=lambda pdf: process.open(pdf, _forever))) == 2


def test_the_child_lives_under_its_memory_limit(process):
    process.open(_two_pages(), _forever).close()
    with open(f"/proc/{process.child.pid}/limits") as limits:
        line = next(line for line in limits if line.startswith("Max address space"))
    assert line.split()[3] == str(1024 * 1024 * 1024)
