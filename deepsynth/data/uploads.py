"""Datasets a client uploads: a JSONL, CSV or Parquet file checked strictly and stored as two Parquet splits.

`read_upload` reads a file of documents and their summaries, whatever its size, only up to the limits it is
given, and refuses anything it cannot use, naming the row or column: a format its name or content does not
match, a missing column, a text or summary that is not a string or is blank, too many or too few rows.
`write_upload` splits the rows into train and validation (a fixed-seed shuffle, so the same file always splits
the same way) and writes `<folder>/train.parquet`, `<folder>/validation.parquet` (columns `id`, `text`,
`summary`) and `<folder>/upload.json`, through `pyarrow.fs` (a local folder or a cloud URI). The folder is a
dataset source, `upload:<folder>`, that `load_records` reads by split and `ray_jobs.prepare_dataset` renders.

    rows = read_upload(file, "news.csv", text_field="article", summary_field="highlights", max_rows=100_000)
    counts = write_upload("/data/datasets/news/upload", "news", rows, validation_rows=None, meta={...})
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from deepsynth.data.prepared import filesystem, join, read_json_object

UPLOAD_PREFIX = "upload:"
FORMATS = {".jsonl": "jsonl", ".csv": "csv", ".parquet": "parquet"}
PARQUET_MAGIC = b"PAR1"
# Bytes looked at to tell a text file (JSONL, CSV) from a binary one.
SNIFF_BYTES = 8192
UPLOAD_SPLITS = ("train", "validation")
MIN_ROWS = 2  # one to train on and one to validate with
SPLIT_SEED = 0
META = "upload.json"
# Documents span lines: a quoted CSV cell may hold newlines.
PARSE = pacsv.ParseOptions(newlines_in_values=True)


class UploadError(ValueError):
    """A file the server will not take: the HTTP status (413, 415, 422), a short type and the form field at fault."""

    def __init__(self, status: int, kind: str, message: str, field: str | None = "file"):
        super().__init__(message)
        self.status, self.kind, self.field = status, kind, field


def upload_format(filename: str) -> str:
    """jsonl, csv or parquet from the file's name; UploadError 415 for any other."""
    suffix = Path(filename or "").suffix.lower()
    if suffix not in FORMATS:
        raise UploadError(415, "unsupported_media_type", f"The file's name must end in one of {list(FORMATS)} "
                          f"(JSON Lines, CSV or Parquet), got {suffix or 'no extension'!r}.")
    return FORMATS[suffix]


def read_upload(file: BinaryIO, filename: str, *, text_field: str, summary_field: str,
                max_rows: int) -> list[tuple[str, str]]:
    """The (text, summary) rows of an uploaded file, in file order; UploadError saying what is wrong otherwise."""
    kind = upload_format(filename)
    head = file.read(SNIFF_BYTES)
    file.seek(0)
    if kind == "parquet":
        if not head.startswith(PARQUET_MAGIC):
            raise UploadError(422, "bad_file", f"{filename} is not a Parquet file (it does not start with PAR1).")
        rows = _parquet_rows(file, filename, text_field, summary_field, max_rows)
    else:
        if head.startswith(PARQUET_MAGIC) or b"\0" in head:
            raise UploadError(422, "bad_file", f"{filename} is binary, not {kind.upper()} text; a Parquet file's "
                              "name must end in .parquet.")
        if kind == "jsonl":
            rows = _jsonl_rows(file, text_field, summary_field, max_rows)
        else:
            rows = _csv_rows(file, text_field, summary_field, max_rows)
    if len(rows) < MIN_ROWS:
        raise UploadError(422, "bad_rows", f"{filename} has {len(rows)} document(s); a dataset needs at least "
                          f"{MIN_ROWS}: one to train on and one to validate with.")
    return rows


def _too_many(max_rows: int) -> UploadError:
    return UploadError(422, "too_many_rows", f"The file has more than this server's limit of {max_rows:,} rows; "
                       "upload fewer documents, or ask the operator to raise max_upload_rows.")


def _check_cell(value: object, row: int, column: str, flag: str) -> str:
    if not isinstance(value, str):
        raise UploadError(422, "bad_rows", f"Row {row}: {column!r} is {type(value).__name__}, not a string.",
                          field=flag)
    if not value.strip():
        raise UploadError(422, "bad_rows", f"Row {row}: {column!r} is empty; every document needs a text and a "
                          "summary.", field=flag)
    return value


def _missing(column: str, columns: list[str], flag: str) -> UploadError:
    shown = columns[:20] + (["..."] if len(columns) > 20 else [])
    return UploadError(422, "missing_field", f"The file has no column {column!r} (its columns: {shown}); set "
                       f"{flag} to the column to use.", field=flag)


def _jsonl_rows(file: BinaryIO, text_field: str, summary_field: str, max_rows: int) -> list[tuple[str, str]]:
    rows = []
    for number, line in enumerate(file, start=1):
        if not line.strip():
            continue
        if len(rows) == max_rows:
            raise _too_many(max_rows)
        try:
            value = json.loads(line)
        except ValueError as err:  # JSONDecodeError, and UnicodeDecodeError of non-UTF-8 bytes
            raise UploadError(422, "bad_file", f"Line {number} is not a JSON object ({type(err).__name__}: "
                              f"{str(err)[:100]}); JSON Lines holds one object per line.") from None
        if not isinstance(value, dict):
            raise UploadError(422, "bad_file", f"Line {number} holds a {type(value).__name__}, not a JSON object.")
        for column, flag in ((text_field, "text_field"), (summary_field, "summary_field")):
            if column not in value:
                raise UploadError(422, "missing_field", f"Line {number} has no field {column!r} (it has "
                                  f"{sorted(value)[:20]}); set {flag} to the field to use.", field=flag)
        rows.append((_check_cell(value[text_field], number, text_field, "text_field"),
                     _check_cell(value[summary_field], number, summary_field, "summary_field")))
    return rows


def _csv_rows(file: BinaryIO, text_field: str, summary_field: str, max_rows: int) -> list[tuple[str, str]]:
    try:
        header = pacsv.open_csv(file, parse_options=PARSE).schema.names
    except (pa.ArrowInvalid, StopIteration) as err:
        raise UploadError(422, "bad_file", f"The file is not CSV with a header row ({str(err)[:200]}).") from None
    for column, flag in ((text_field, "text_field"), (summary_field, "summary_field")):
        if column not in header:
            raise _missing(column, header, flag)
    file.seek(0)
    # Both columns as strings, never inferred numbers or nulls, so an empty cell is "" and refused below.
    convert = pacsv.ConvertOptions(column_types={text_field: pa.string(), summary_field: pa.string()},
                                   include_columns=[text_field, summary_field], strings_can_be_null=False)
    try:
        table = pacsv.read_csv(file, parse_options=PARSE, convert_options=convert)
    except pa.ArrowInvalid as err:
        raise UploadError(422, "bad_file", f"The CSV cannot be read: {str(err)[:300]}") from None
    if table.num_rows > max_rows:
        raise _too_many(max_rows)
    return _table_rows(table, text_field, summary_field, first_row=2)  # row 1 is the header


def _parquet_rows(file: BinaryIO, filename: str, text_field: str, summary_field: str,
                  max_rows: int) -> list[tuple[str, str]]:
    try:
        parquet = pq.ParquetFile(file)
    except (pa.ArrowInvalid, OSError) as err:
        raise UploadError(422, "bad_file", f"{filename} is not a readable Parquet file ({str(err)[:200]}).") from None
    schema = parquet.schema_arrow
    for column, flag in ((text_field, "text_field"), (summary_field, "summary_field")):
        if column not in schema.names:
            raise _missing(column, schema.names, flag)
        kind = schema.field(column).type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            raise UploadError(422, "bad_rows", f"Column {column!r} holds {kind}, not strings.", field=flag)
    if parquet.metadata.num_rows > max_rows:  # from the footer, before any row is read
        raise _too_many(max_rows)
    try:
        table = parquet.read(columns=[text_field, summary_field])
    except (pa.ArrowInvalid, OSError) as err:
        raise UploadError(422, "bad_file", f"{filename} cannot be read ({str(err)[:200]}).") from None
    return _table_rows(table, text_field, summary_field, first_row=1)


def _table_rows(table: pa.Table, text_field: str, summary_field: str, first_row: int) -> list[tuple[str, str]]:
    texts, summaries = table.column(text_field).to_pylist(), table.column(summary_field).to_pylist()
    return [(_check_cell(text, row, text_field, "text_field"), _check_cell(summary, row, summary_field,
                                                                             "summary_field"))
            for row, (text, summary) in enumerate(zip(texts, summaries), start=first_row)]


def split_sizes(rows: int, validation_rows: int | None) -> tuple[int, int]:
    """(train, validation) row counts: `validation_rows`, by default a tenth of the rows (at least one)."""
    validation = max(1, rows // 10) if validation_rows is None else validation_rows
    if not 1 <= validation < rows:
        raise UploadError(422, "bad_rows", f"validation_rows must be in [1, {rows - 1}] for a file of {rows} "
                          f"rows (the others are the train split), got {validation}.", field="validation_rows")
    return rows - validation, validation


def write_upload(folder: str, name: str, rows: list[tuple[str, str]], validation_rows: int | None,
                 meta: dict) -> dict[str, int]:
    """Write the splits and `upload.json` (`meta` with the row counts) to `folder`. -> {split: rows}"""
    train, validation = split_sizes(len(rows), validation_rows)
    order = list(range(len(rows)))
    random.Random(SPLIT_SEED).shuffle(order)
    splits = dict(zip(UPLOAD_SPLITS, (sorted(order[:train]), sorted(order[train:]))))
    fs, path = filesystem(folder)
    fs.create_dir(path, recursive=True)
    for split, indices in splits.items():
        table = pa.table({"id": [f"{name}-{i:06d}" for i in indices], "text": [rows[i][0] for i in indices],
                          "summary": [rows[i][1] for i in indices]})
        pq.write_table(table, join(path, f"{split}.parquet"), filesystem=fs)
    counts = {split: len(indices) for split, indices in splits.items()}
    write_upload_meta(folder, {**meta, "name": name, "rows": counts})
    return counts


def write_upload_meta(folder: str, meta: dict) -> None:
    fs, path = filesystem(folder)
    with fs.open_output_stream(join(path, META)) as f:
        f.write(json.dumps(meta, indent=2).encode())


def list_upload_meta(datasets_root: str) -> list[dict]:
    """The `upload.json` of every upload under `datasets_root` (in `<name>/upload/`), by name; a folder without
    one (a prepared dataset of another source, an upload being written) is not listed."""
    fs, root = filesystem(datasets_root)
    found = []
    for info in sorted(fs.get_file_info(pafs.FileSelector(root, allow_not_found=True)), key=lambda i: i.base_name):
        if info.type != pafs.FileType.Directory:
            continue
        meta = read_json_object(fs, join(info.path, "upload", META))
        if meta is not None and meta.get("name") == info.base_name:
            found.append(meta)
    return found


def load_upload_records(folder: str, split: str, limit: int | None = None) -> list[dict]:
    """Records `{"id", "text", "summary"}` of an uploaded dataset's split, in file order."""
    fs, path = filesystem(folder)
    file = join(path, f"{split}.parquet")
    try:
        table = pq.read_table(file, columns=["id", "text", "summary"], filesystem=fs)
    except FileNotFoundError:
        raise ValueError(f"The uploaded dataset {folder} has no {split!r} split; uploads hold train and "
                         "validation.") from None
    records = table.to_pylist()
    return records if limit is None else records[:limit]
