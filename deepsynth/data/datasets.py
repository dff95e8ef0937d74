"""Load summarization datasets as plain records.

Every source comes back as a list of `{"id": str, "text": str, "summary": str}` dicts; what a
record becomes next (pages, tokens) is decided elsewhere, so nothing here knows the model. A
source is one of:

- `"builtin"`: the offline corpus of `deepsynth.data.corpus`, the default that needs no network;
- a preset name from `PRESETS` (`cnn_dailymail`, `xsum`, `arxiv`, `billsum`, `mlsum`), read
  from the Hugging Face Hub or its local cache with `datasets.load_dataset`;
- a local `.jsonl`, `.json`, `.csv` or `.parquet` file, one row per document;
- `"prepared:<folder>"`: a dataset rendered ahead by `ray_jobs.prepare_dataset`, whose records
  also point at their pre-rendered pages (see `deepsynth.data.prepared`).
- `"upload:<folder>"`: a file a client uploaded to the job API, stored as one Parquet file per
  split (see `deepsynth.data.uploads`).

The loader is a parameter, so tests inject a fake one and no code path needs the Hub.

    records = load_records("builtin", "train", limit=128, seed=0)
    records = load_records("billsum", "validation", limit=100)   # BillSum's "ca_test" split
    records = load_records("data/news.parquet", text_field="article", summary_field="highlights")
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import datasets

from deepsynth.data.corpus import SPLITS, generate_corpus
from deepsynth.data.prepared import PREFIX, load_prepared_records
from deepsynth.data.uploads import UPLOAD_PREFIX, load_upload_records

logger = logging.getLogger(__name__)

BUILTIN = "builtin"

# The built-in corpus is generated, not read, so it has no natural size; these keep a default
# run small enough for a CPU while leaving a model enough documents to learn topic and trend.
BUILTIN_DEFAULT_LIMITS: dict[str, int] = {"train": 256, "validation": 64, "test": 64}

# File suffix -> the `datasets` packaged loader that reads it.
FILE_LOADERS: dict[str, str] = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


@dataclass(frozen=True, kw_only=True)
class DatasetPreset:
    """Where a Hub dataset lives and which of its columns hold the document and its summary."""

    name: str
    """Our name for the dataset, the `source` passed to `load_records`."""
    hub_id: str
    """Repository on the Hugging Face Hub, the `path` argument of `datasets.load_dataset`."""
    config: str | None = None
    """Dataset configuration (`name` of `datasets.load_dataset`), or None for the default one."""
    text_field: str
    """Column with the document text."""
    summary_field: str
    """Column with the reference summary."""
    id_field: str | None = None
    """Column with a stable document id, or None to number the rows ("train-00042")."""
    splits: Mapping[str, str] = field(default_factory=lambda: {s: s for s in SPLITS})
    """Our split names (train/validation/test) -> the dataset's own split names."""
    description: str = ""
    """One line for listings: what the documents and the summaries are."""

    def __post_init__(self) -> None:
        if set(self.splits) != set(SPLITS):
            raise ValueError(
                f"DatasetPreset {self.name!r}: splits must map exactly {list(SPLITS)} to the dataset's "
                f"split names, got keys {sorted(self.splits)}."
            )


PRESETS: dict[str, DatasetPreset] = {
    preset.name: preset
    for preset in (
        DatasetPreset(
            name="cnn_dailymail",
            hub_id="abisee/cnn_dailymail",
            config="3.0.0",
            text_field="article",
            summary_field="highlights",
            id_field="id",
            description="CNN and Daily Mail news articles with their bullet-point highlights (English).",
        ),
        DatasetPreset(
            name="xsum",
            hub_id="EdinburghNLP/xsum",
            text_field="document",
            summary_field="summary",
            id_field="id",
            description="BBC articles with a one-sentence extreme summary (English).",
        ),
        DatasetPreset(
            name="arxiv",
            hub_id="ccdv/arxiv-summarization",
            text_field="article",
            summary_field="abstract",
            description="Long arXiv papers with their abstracts (English).",
        ),
        DatasetPreset(
            name="billsum",
            hub_id="FiscalNote/billsum",
            text_field="text",
            summary_field="summary",
            # BillSum has no validation split; its California bills are the usual held-out set.
            splits={"train": "train", "validation": "ca_test", "test": "test"},
            description="US Congressional and California state bills with their official summaries (English).",
        ),
        DatasetPreset(
            name="mlsum",
            hub_id="reciTAL/mlsum",
            config="de",
            text_field="text",
            summary_field="summary",
            description="Süddeutsche Zeitung news articles with their summaries (German).",
        ),
    )
}


def load_records(
    source: str,
    split: str = "train",
    limit: int | None = None,
    *,
    seed: int = 0,
    text_field: str | None = None,
    summary_field: str | None = None,
    id_field: str | None = None,
    load_dataset: Callable[..., datasets.Dataset] = datasets.load_dataset,
) -> list[dict]:
    """Load up to `limit` records `{"id", "text", "summary"}` of `split` from `source`.

    `source` is "builtin", a key of `PRESETS` or a local data file (see the module docstring).
    `limit` counts the records returned; None means the whole split, or for "builtin" the
    size in `BUILTIN_DEFAULT_LIMITS`. `seed` only changes the built-in corpus. The field
    arguments name the columns of a local file (default "text", "summary" and none for ids)
    or override a preset's. Rows whose text or summary is empty are skipped and counted in
    a log warning. `load_dataset` has the signature of `datasets.load_dataset` and, given a
    split, returns a `datasets.Dataset`; it reads presets and local files alike.
    """
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; choose one of {list(SPLITS)}.")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 or None for the whole split, got {limit}.")

    if source == BUILTIN:
        if text_field or summary_field or id_field:
            raise ValueError(
                "The built-in corpus has fixed fields; drop text_field=/summary_field=/id_field= "
                "or load a preset or a local file instead."
            )
        num_documents = BUILTIN_DEFAULT_LIMITS[split] if limit is None else limit
        return [
            {"id": doc["id"], "text": doc["text"], "summary": doc["summary"]}
            for doc in generate_corpus(split, num_documents, seed=seed)
        ]

    if source.startswith(PREFIX):
        if text_field or summary_field or id_field:
            raise ValueError("A prepared dataset has fixed fields; drop text_field=/summary_field=/id_field=.")
        return load_prepared_records(source.removeprefix(PREFIX), split, limit)

    if source.startswith(UPLOAD_PREFIX):
        if text_field or summary_field or id_field:
            raise ValueError("An uploaded dataset has fixed fields (id, text, summary); drop "
                             "text_field=/summary_field=/id_field=.")
        return load_upload_records(source.removeprefix(UPLOAD_PREFIX), split, limit)

    if source in PRESETS:
        preset = PRESETS[source]
        try:
            rows = load_dataset(preset.hub_id, name=preset.config, split=preset.splits[split])
        except OSError as err:  # ConnectionError is an OSError; so is a Hub cache miss offline.
            raise RuntimeError(
                f"Could not load {preset.hub_id!r} ({type(err).__name__}; see the chained error). "
                "A Hub dataset must be downloaded once on a machine with network access (it is then "
                "read from the Hugging Face cache), or exported and passed as a local "
                ".jsonl/.json/.csv/.parquet file. To run without any download, use source 'builtin'."
            ) from err
        fields = (
            text_field or preset.text_field,
            summary_field or preset.summary_field,
            id_field or preset.id_field,
        )
        return _to_records(rows, source, split, limit, *fields)

    suffix = Path(source).suffix.lower()
    if suffix in FILE_LOADERS:
        if not Path(source).is_file():
            raise FileNotFoundError(f"Dataset file {source!r} does not exist; check the path.")
        # A local file is one table: whichever split we asked for, it is the loader's "train".
        rows = load_dataset(FILE_LOADERS[suffix], data_files=source, split="train")
        return _to_records(rows, source, split, limit, text_field or "text", summary_field or "summary", id_field)

    raise ValueError(
        f"Unknown dataset source {source!r}; use {BUILTIN!r}, a preset ({', '.join(sorted(PRESETS))}), "
        f"a path to a local file ending in {', '.join(FILE_LOADERS)}, {PREFIX}<folder of a prepared dataset> or "
        f"{UPLOAD_PREFIX}<folder of an uploaded one>."
    )


def _to_records(
    rows: datasets.Dataset,
    source: str,
    split: str,
    limit: int | None,
    text_field: str,
    summary_field: str,
    id_field: str | None,
) -> list[dict]:
    columns = list(rows.column_names)
    for flag, name in (("text_field", text_field), ("summary_field", summary_field), ("id_field", id_field)):
        if name is not None and name not in columns:
            raise ValueError(
                f"Field {name!r} is not a column of {source!r}; its columns are {columns}. "
                f"Set {flag}= to the column to use."
            )

    records: list[dict] = []
    skipped = 0
    # Iterating a `datasets.Dataset` reads memory-mapped Arrow batches, so stopping at `limit`
    # never materializes a large split, and skipped rows don't shrink the result below `limit`.
    for index, row in enumerate(rows):
        if limit is not None and len(records) >= limit:
            break
        # Missing cells arrive as None (e.g. an empty CSV field), which counts as empty.
        text, summary = row[text_field] or "", row[summary_field] or ""
        if not text.strip() or not summary.strip():
            skipped += 1
            continue
        record_id = str(row[id_field]) if id_field is not None else f"{split}-{index:05d}"
        records.append({"id": record_id, "text": text, "summary": summary})
    if skipped:
        logger.warning("Skipped %d rows of %r (%s) with an empty text or summary.", skipped, source, split)
    return records
