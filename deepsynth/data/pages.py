"""Page images as plain data, for Ray Data pipelines.

Ray Data moves rows between processes, so pages travel as PNG bytes, not PIL objects.
`render_batch` is the model-agnostic `map_batches` step (text in, PNG pages out);
`decode_pages` turns a row's bytes back into images where the collator needs them.

    ds = ray.data.from_items(records).map_batches(render_batch, fn_kwargs={"layout": "ocr2-page"})
    pages = decode_pages(row["pages"])
"""

from __future__ import annotations

import io
from typing import Iterable

import numpy as np
import ray
from PIL import Image

from deepsynth.data.render import count_pages, get_layout, render_pages


def encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    # Level 1: pages are mostly white, so fast compression is already small; level 6 costs 3x the CPU.
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def decode_pages(pages: Iterable[bytes]) -> list[Image.Image]:
    return [Image.open(io.BytesIO(data)).convert("RGB") for data in pages]


def render_batch(batch: dict[str, np.ndarray], layout: str, max_pages: int | None = None,
                 truncate: bool = False) -> dict[str, np.ndarray]:
    """Add `pages` (a list of PNG bytes per row) and `num_pages` to a batch that has a `text` column.

    A text over `max_pages` pages raises, or with `truncate` keeps its first `max_pages` pages.
    """
    page_layout = get_layout(layout)
    rendered = [[encode_png(p) for p in render_pages(str(text), page_layout, max_pages, truncate)]
                for text in batch["text"]]
    out = dict(batch)
    out["pages"] = np.array(rendered + [None], dtype=object)[:-1]  # keeps one list per row, never a 2-D array
    out["num_pages"] = np.array([len(p) for p in rendered], dtype=np.int64)
    return out


def count_pages_batch(batch: dict[str, np.ndarray], layout: str) -> dict[str, np.ndarray]:
    """Ray Data step: the `num_pages` each row's `text` needs at `layout`, without rendering it."""
    page_layout = get_layout(layout)
    return {"num_pages": np.array([count_pages(str(text), page_layout) for text in batch["text"]], dtype=np.int64)}


def page_counts(records: list[dict], layout: str, batch_size: int = 64) -> list[int]:
    """Pages of each record, in order: a prepared record's own count, else counted by Ray Data tasks."""
    if all("num_pages" in record for record in records):
        return [int(record["num_pages"]) for record in records]
    # Only the text travels to the tasks; preserve_order keeps the counts aligned with the records.
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    rows = (ray.data.from_items([{"text": record["text"]} for record in records])
            .map_batches(count_pages_batch, fn_kwargs={"layout": layout}, batch_size=batch_size).take_all())
    return [int(row["num_pages"]) for row in rows]
