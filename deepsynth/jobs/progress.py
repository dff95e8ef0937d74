"""What a run folder says about its job: metrics reported so far and the checkpoints written.

The training loop appends one JSON line per report to `<run>/logs/metrics.jsonl` (a resumed
run keeps appending) and writes `step-XXXXXX/` checkpoints with a `meta.json`. Both are read
through `pyarrow.fs`, so a run on `s3://` or `gs://` storage reads like a local one. A file that
is half-written or corrupt is skipped with a logged warning: one bad run folder never fails a
listing, nor the API's start-up reconciliation.

    latest = latest_metrics(run_dir)          # {"step": 4, "loss": ..., ...} or None
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


def read_metrics(run_dir: str) -> list[dict]:
    """Every line of the run's metrics.jsonl, oldest first; [] before the first report."""
    fs, path = filesystem(run_dir)
    try:
        with fs.open_input_stream(join(path, "logs", "metrics.jsonl")) as f:
            text = f.read().decode(errors="replace")
    except FileNotFoundError:
        return []
    # The last line may be half-written while the loop appends; it is skipped until complete.
    lines = []
    for line in text.splitlines():
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict) and isinstance(value.get("step"), int):
            lines.append(value)
    return lines


def latest_metrics(run_dir: str) -> dict | None:
    """The latest training-step report (a line with a loss), or None before the first step."""
    steps = [line for line in read_metrics(run_dir) if "loss" in line]
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
