"""Prepared datasets: documents rendered once to Parquet shards of page images, with a manifest.

`ray_jobs/prepare_dataset.py` writes, under `<root>/datasets/<name>/`,

- `<split>/*.parquet`: one row per document with `id`, `text`, `summary`, `pages` (PNG bytes,
  one per page, as `deepsynth.data.pages` encodes them) and `num_pages`, `text_tokens`,
  `visual_tokens`, `ratio` (the compression statistics of `deepsynth.data.compression`);
- `manifest.json`: the settings it was rendered with, its shards and every document's statistics.

Training reads one with `dataset: prepared:<folder>`: `load_prepared_records` returns records
that point at their shard and row, and `read_prepared_pages` (a Ray Data step) fetches their
pages instead of rendering. Folders may be local paths or cloud URIs (read with `pyarrow.fs`).

    records = load_prepared_records("/data/datasets/news", "train", limit=100)
    ds = ray.data.from_items(records).map_batches(read_prepared_pages)
"""

from __future__ import annotations

import functools
import io
import json
import logging
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from PIL import Image

from deepsynth.data.corpus import SPLITS
from deepsynth.data.long_documents import check_policy
from deepsynth.data.render import get_layout
from deepsynth.model.loading import DEFAULT_MODEL

logger = logging.getLogger(__name__)

PREFIX = "prepared:"
MANIFEST = "manifest.json"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass
class PrepareConfig:
    name: str
    """Folder name of the prepared dataset under `<output>/datasets/`."""
    source: str = "builtin"
    """builtin, a dataset preset (cnn_dailymail, xsum, ...), a local .jsonl/.csv/.parquet file, or upload:<folder>
    of a dataset uploaded to the job API."""
    splits: list[str] = field(default_factory=lambda: ["train", "validation"])
    """Splits to render; training needs train and validation."""
    limit: int | None = None
    """Documents per split; None is the whole split (256 train / 64 validation for builtin)."""
    seed: int = 0
    """Seed of the built-in corpus."""
    text_field: str | None = None
    summary_field: str | None = None
    layout: str = "ocr2-page"
    """Page layout (see deepsynth.data.render.LAYOUTS)."""
    max_pages: int = 8
    """Most pages per document; what happens to longer ones is long_documents."""
    long_documents: str = "skip"
    """skip (leave documents over max_pages out), truncate (keep their first max_pages pages) or error; counted in
    the manifest."""
    model: str = DEFAULT_MODEL
    """Model whose tokenizer and processor count the text and visual tokens of the statistics."""
    trust_remote_code: bool = False
    """Passed to a DeepSeek-OCR v1 model's tokenizer; nothing needs it."""
    rows_per_shard: int = 256
    """Documents per Parquet file."""

    def __post_init__(self) -> None:
        if not NAME_PATTERN.match(self.name):
            raise ValueError(f"name must be 1-64 letters, digits, '.', '_' or '-' (not starting with one of "
                             f"the last three), got {self.name!r}.")
        if not self.splits or any(split not in SPLITS for split in self.splits):
            raise ValueError(f"splits must be a non-empty subset of {list(SPLITS)}, got {self.splits}.")
        if self.limit is not None and not 1 <= self.limit <= 100_000_000:
            raise ValueError(f"limit must be in [1, 100000000] or null for the whole split, got {self.limit}.")
        for name, (low, high) in (("max_pages", (1, 256)), ("rows_per_shard", (1, 100_000)), ("seed", (0, 2**32 - 1))):
            if not low <= getattr(self, name) <= high:
                raise ValueError(f"{name} must be in [{low}, {high}], got {getattr(self, name)}.")
        try:
            get_layout(self.layout)
        except ValueError as err:
            raise ValueError(f"layout: {err}") from None
        check_policy(self.long_documents)


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path within it, for a local path or a cloud URI (s3://, gs://)."""
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), str(Path(uri).resolve())


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def read_json_object(fs: pafs.FileSystem, path: str) -> dict | None:
    """The JSON object in a file; None when it is missing, or is not one (half-written or corrupt: logged).

    Listings call this on files that another process may be writing, or that a crash cut short, so one bad
    file is skipped with a warning instead of failing the whole listing.
    """
    try:
        with fs.open_input_stream(path) as f:
            value = json.loads(f.read())
    except FileNotFoundError:
        return None
    except ValueError as err:  # JSONDecodeError, and UnicodeDecodeError of a binary file
        logger.warning("Skipping %s: it is not valid JSON (%s); a half-written or corrupt file.", path, err)
        return None
    if not isinstance(value, dict):
        logger.warning("Skipping %s: it holds a %s, not a JSON object.", path, type(value).__name__)
        return None
    return value


def read_manifest(folder: str) -> dict:
    fs, path = filesystem(folder)
    try:
        with fs.open_input_stream(join(path, MANIFEST)) as f:
            return json.loads(f.read())
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{folder} is not a prepared dataset (no {MANIFEST}); create one with ray_jobs.prepare_dataset."
        ) from None


def write_manifest(folder: str, manifest: dict) -> None:
    fs, path = filesystem(folder)
    with fs.open_output_stream(join(path, MANIFEST)) as f:
        f.write(json.dumps(manifest, indent=2).encode())


def list_prepared(datasets_root: str) -> list[dict]:
    """A summary of every prepared dataset (a folder with a manifest) directly under `datasets_root`."""
    fs, root = filesystem(datasets_root)
    infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    found = []
    for info in sorted(infos, key=lambda i: i.base_name):
        if info.type != pafs.FileType.Directory:
            continue
        folder = join(datasets_root, info.base_name)
        manifest = read_json_object(fs, join(info.path, MANIFEST))
        if manifest is None:  # a dataset still being written, an unrelated folder or a corrupt manifest
            continue
        try:
            found.append({"name": info.base_name, "path": folder, "source": manifest["source"],
                          "layout": manifest["layout"], "created": manifest["created"],
                          "splits": {split: s["documents"] for split, s in manifest["splits"].items()},
                          "summary": manifest["summary"]})
        except (KeyError, TypeError, AttributeError) as err:
            logger.warning("Skipping %s: its %s is malformed (%r).", folder, MANIFEST, err)
    return found


def summarize_stats(documents: list[dict]) -> dict:
    """Totals and means of the per-document compression statistics."""
    if not documents:
        return {"documents": 0}
    pages = sum(d["num_pages"] for d in documents)
    text_tokens = sum(d["text_tokens"] for d in documents)
    visual_tokens = sum(d["visual_tokens"] for d in documents)
    return {"documents": len(documents), "pages": pages, "text_tokens": text_tokens, "visual_tokens": visual_tokens,
            "ratio": text_tokens / visual_tokens, "mean_ratio": float(np.mean([d["ratio"] for d in documents]))}


def load_prepared_records(folder: str, split: str, limit: int | None = None) -> list[dict]:
    """Records `{"id", "text", "summary", "num_pages", "shard", "row"}` of `split`; pages are fetched later by shard
    and row, and `num_pages` lets training apply its long-document policy without reading them."""
    if "://" not in folder:
        folder = str(Path(folder).resolve())
    manifest = read_manifest(folder)
    if split not in manifest["splits"]:
        raise ValueError(f"Prepared dataset {folder} has no {split!r} split (it has {sorted(manifest['splits'])}); "
                         f"prepare it with splits including {split}.")
    fs, _ = filesystem(folder)
    records: list[dict] = []
    for shard in manifest["splits"][split]["shards"]:
        uri = join(folder, split, shard["file"])
        _, path = filesystem(uri)
        table = pq.read_table(path, columns=["id", "text", "summary", "num_pages"], filesystem=fs)
        columns = zip(*(table.column(c).to_pylist() for c in table.column_names))
        for row, (doc_id, text, summary, num_pages) in enumerate(columns):
            if limit is not None and len(records) >= limit:
                return records
            records.append({"id": doc_id, "text": text, "summary": summary, "num_pages": num_pages, "shard": uri,
                            "row": row})
    return records


def read_prepared_pages(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Ray Data step: add `pages` and `num_pages` to rows that carry `shard` and `row`, reading each shard once."""
    wanted: dict[str, list[int]] = defaultdict(list)
    for shard, row in zip(batch["shard"], batch["row"]):
        wanted[str(shard)].append(int(row))
    pages_of: dict[tuple[str, int], list[bytes]] = {}
    for shard, rows in wanted.items():
        fs, path = filesystem(shard)
        column = pq.read_table(path, columns=["pages"], filesystem=fs).column("pages").take(rows).to_pylist()
        pages_of.update({(shard, row): pages for row, pages in zip(rows, column)})
    pages = [pages_of[(str(shard), int(row))] for shard, row in zip(batch["shard"], batch["row"])]
    out = dict(batch)
    out["pages"] = np.array(pages + [None], dtype=object)[:-1]  # one list per row, never a 2-D array
    out["num_pages"] = np.array([len(p) for p in pages], dtype=np.int64)
    return out


@functools.lru_cache(maxsize=2)
def _family(model: str, trust_remote_code: bool, layout: str):
    from deepsynth.model.loading import load_processor
    from deepsynth.model.tokens import v1_mode_for

    return load_processor(model, trust_remote_code=trust_remote_code, v1_mode=v1_mode_for(layout))[1]


def add_compression_stats(batch: dict[str, np.ndarray], model: str, trust_remote_code: bool = False,
                          layout: str = "ocr2-page") -> pa.Table:
    """Ray Data step after `render_batch`: per-document text tokens, visual tokens and their ratio.

    `layout` is the one the pages were rendered with; it picks a DeepSeek-OCR v1 model's mode.

    Returns an Arrow table so `pages` is stored as a plain `list<binary>` column that any Parquet reader reads.
    """
    from deepsynth.data.compression import compression_stats

    family = _family(model, trust_remote_code, layout)
    # Image.open reads only the header: the statistics need page sizes, not pixels.
    stats = [compression_stats(str(text), [Image.open(io.BytesIO(png)) for png in pages], family)
             for text, pages in zip(batch["text"], batch["pages"])]
    return pa.table({
        "id": pa.array([str(v) for v in batch["id"]], pa.string()),
        "text": pa.array([str(v) for v in batch["text"]], pa.string()),
        "summary": pa.array([str(v) for v in batch["summary"]], pa.string()),
        "pages": pa.array([list(pages) for pages in batch["pages"]], pa.list_(pa.binary())),
        "num_pages": pa.array([s.pages for s in stats], pa.int64()),
        "text_tokens": pa.array([s.text_tokens for s in stats], pa.int64()),
        "visual_tokens": pa.array([s.visual_tokens for s in stats], pa.int64()),
        "ratio": pa.array([s.ratio for s in stats], pa.float64()),
    })
