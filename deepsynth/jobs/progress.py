"""What a run folder says about its job: metrics reported so far and the checkpoints written.

The training loop appends one JSON line per report to `<run>/logs/metrics.jsonl` (a resumed
run keeps appending) and writes `step-XXXXXX/` checkpoints with a `meta.json`. Both are read
through `pyarrow.fs`, so a run on `s3://` or `gs://` storage reads like a local one. A file that
is half-written or corrupt is skipped with a logged warning: one bad run folder never fails a
listing, nor the API's start-up reconciliation. A log is never read whole into memory: pages of it
are streamed a chunk at a time, and the latest report comes from its tail.

    latest = latest_metrics(run_dir)          # {"step": 4, "loss": ..., ...} or None
    records, more = metrics_page(run_dir, since=10, limit=500)   # the reports after step 10
    checkpoints = list_checkpoints(run_dir)   # [{"step": 4, "path": ..., "metrics": {...}}, ...]
    step = resume_step(run_dir)               # where a resume continues: Ray Train's latest checkpoint
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import pyarrow.fs as pafs

from deepsynth.data.prepared import filesystem, join, read_json_object
from deepsynth.training.checkpoint import is_complete

logger = logging.getLogger(__name__)

STEP_DIR = re.compile(r"^step-(\d{6})$")


# Bounds of reading a metrics log, whatever its size: the chunk read at a time, the longest line kept (a longer
# one is no report of ours and is skipped), and the tail `latest_metrics` reads first.
CHUNK_BYTES = 1 << 20
MAX_LINE_BYTES = 1 << 20
TAIL_BYTES = 256 << 10
# MetricsLog writes `{"step": N, ...}`: the step is read without parsing lines a reader skips anyway.
STEP_PREFIX = re.compile(rb'^\{"step": (-?\d+)[,}]')


def metrics_path(run_dir: str) -> str:
    return join(run_dir, "logs", "metrics.jsonl")


def _lines(stream, first_partial: bool = False):
    """The lines of a pyarrow input stream, read a chunk at a time; overlong lines are dropped.

    `first_partial`: the stream starts mid-file, so its first line is a fragment and is dropped too. The last line
    may be half-written while the loop appends; it is yielded as it is and fails to parse until complete.
    """
    buffer, skipping = b"", first_partial
    while True:
        chunk = stream.read(CHUNK_BYTES)
        if not chunk:
            break
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        for line in complete:
            if not skipping:
                yield line
            skipping = False
        if len(buffer) > MAX_LINE_BYTES:
            logger.warning("Skipping a metrics line longer than %d bytes.", MAX_LINE_BYTES)
            buffer, skipping = b"", True
    if buffer and not skipping:
        yield buffer


def _record(line: bytes, since: int | None = None) -> dict | None:
    """The report on one line, or None for a line that is not one (or is at or before step `since`)."""
    match = STEP_PREFIX.match(line)
    if match and since is not None and int(match.group(1)) <= since:
        return None
    try:
        value = json.loads(line)
    except ValueError:  # half-written, or not UTF-8
        return None
    if not isinstance(value, dict) or not isinstance(value.get("step"), int) or isinstance(value["step"], bool):
        return None
    return value if since is None or value["step"] > since else None


def iter_metrics(run_dir: str, since: int | None = None):
    """The reports of the run's metrics.jsonl in file order (those after step `since` only, if given), streamed:
    memory stays at one chunk, whatever the file's size."""
    fs, path = filesystem(run_dir)
    try:
        stream = fs.open_input_stream(metrics_path(path))
    except FileNotFoundError:
        return
    with stream:
        for line in _lines(stream):
            record = _record(line, since)
            if record is not None:
                yield record


def read_metrics(run_dir: str) -> list[dict]:
    """Every report of the run's metrics.jsonl, oldest first; [] before the first report."""
    return list(iter_metrics(run_dir))


def metrics_page(run_dir: str, since: int, limit: int) -> tuple[list[dict], bool]:
    """At most `limit` reports after step `since`, in file order, and whether more follow.

    A page ends at a step boundary: when the reports of its last step go on past `limit`, that step is left to
    the next page (`since` = the last step returned), unless it is the page's only step.
    """
    records: list[dict] = []
    for record in iter_metrics(run_dir, since):
        if len(records) == limit:
            last = records[-1]["step"]
            if record["step"] == last and any(r["step"] != last for r in records):
                records = [r for r in records if r["step"] != last]
            return records, True
        records.append(record)
    return records, False


def tail_metrics(fs: pafs.FileSystem, path: str, max_bytes: int = TAIL_BYTES) -> list[dict]:
    """The reports in the last `max_bytes` of a JSON-lines file, oldest first; [] when it is missing."""
    try:
        handle = fs.open_input_file(path)
    except FileNotFoundError:
        return []
    with handle:
        start = max(0, handle.size() - max_bytes)
        handle.seek(start)
        return [r for r in map(_record, _lines(handle, first_partial=start > 0)) if r is not None]


def latest_metrics(run_dir: str) -> dict | None:
    """The latest training-step report (a line with a loss), or None before the first step.

    Read from the file's tail; only a log whose tail holds no step report (none so far) is read whole.
    """
    fs, path = filesystem(run_dir)
    steps = [line for line in tail_metrics(fs, metrics_path(path)) if "loss" in line]
    if not steps:
        steps = [line for line in iter_metrics(run_dir) if "loss" in line]
    return steps[-1] if steps else None


def list_checkpoints(run_dir: str) -> list[dict]:
    """Complete checkpoints of a run, by step: `step-XXXXXX/` folders whose meta.json (written last) is there and
    whose listed files all are (`is_complete`)."""
    fs, path = filesystem(run_dir)
    found = []
    for info in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)):
        match = STEP_DIR.match(info.base_name)
        if info.type != pafs.FileType.Directory or not match:
            continue
        meta = read_json_object(fs, join(info.path, "meta.json"))
        if meta is None:
            continue
        metrics, created = meta.get("metrics", {}), meta.get("created")
        if not isinstance(metrics, dict) or not isinstance(created, (str, type(None))):
            logger.warning("Skipping %s: its meta.json has no metrics mapping or created time.", info.path)
            continue
        if not isinstance(meta.get("files", {}), dict) or not is_complete(join(run_dir, info.base_name), meta):
            continue  # a copy or deletion cut short
        found.append({"step": int(match.group(1)), "path": join(run_dir, info.base_name), "metrics": metrics,
                      "created": created})
    return sorted(found, key=lambda c: c["step"])


def resume_step(run_dir: str) -> int | None:
    """The step a resumed run continues from: Ray Train's latest registered checkpoint, or None (from scratch).

    A `step-XXXXXX/` folder can exist before Ray Train records it in `checkpoint_manager_snapshot.json`
    (a crash in between); resuming follows the snapshot, so this does too.
    """
    fs, path = filesystem(run_dir)
    snapshot = read_json_object(fs, join(path, "checkpoint_manager_snapshot.json")) or {}
    latest = snapshot.get("latest_checkpoint_result")
    name = latest.get("checkpoint_dir_name") if isinstance(latest, dict) else None
    match = STEP_DIR.match(name) if isinstance(name, str) else None
    return int(match.group(1)) if match else None


def list_runs(runs_root: str) -> list[dict]:
    """Every run folder under `runs_root` that has checkpoints, with them."""
    fs, path = filesystem(runs_root)
    runs = []
    for info in sorted(fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)), key=lambda i: i.base_name):
        if info.type != pafs.FileType.Directory:
            continue
        checkpoints = list_checkpoints(join(runs_root, info.base_name))
        if checkpoints:
            runs.append({"run": info.base_name, "checkpoints": checkpoints})
    return runs


def remove_tree(folder: str) -> None:
    """Delete a run or dataset folder (DELETE ?purge=true); a missing folder is fine.

    A local folder may hold symlinks (a job may write one, or an operator link a dataset in): each is removed
    as a link, never followed, so a purge only ever deletes what lies inside its own folder.
    """
    if "://" not in folder:
        path = Path(folder)
        if path.is_symlink():
            path.unlink()
        elif path.exists():
            shutil.rmtree(path)  # unlinks symlinks inside, never their targets
        return
    fs, path = filesystem(folder)
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        fs.delete_dir(path)
