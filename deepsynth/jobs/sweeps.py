"""What a sweep job's folders say about its trials: parameters, status, val loss, ROUGE-L and the best one.

A `tune` job (`ray_jobs/tune_lora.py`) runs one Ray Train run per trial, each in its own run folder
`<runs>/<trial run name>/` with a `logs/metrics.jsonl`, under a Tune experiment `<runs>/<job id>/` whose
`<trial run name>/result.json` gets one line per Tune report; a trial's last report carries its ROUGE-L and
best checkpoint. When the sweep ends, `<runs>/<job id>/results.csv` holds the final table. Every file is
read from its tail (`tail_metrics`), so a listing costs a few small reads per trial, whatever the run length.

    trials = sweep_trials(runs_root, job_id, planned, active=True)   # planned: SweepConfig.trials()
"""

from __future__ import annotations

import csv
import io
import logging

import pyarrow.fs as pafs

from deepsynth.data.prepared import filesystem, join
from deepsynth.jobs.progress import metrics_path, tail_metrics

logger = logging.getLogger(__name__)

RESULTS = "results.csv"
# results.csv's numeric columns (tune_lora.trial_row); the others are strings.
NUMBERS = {"rank": int, "alpha": int, "trainable_parameters": int, "lr": float, "dropout": float,
           "val_loss": float, "rouge_l": float, "samples_per_s": float, "peak_memory_mb": float}
# Largest results.csv read: 256 trials (MAX_TRIALS) of one short line each fit many times over.
MAX_RESULTS_BYTES = 1 << 20


def sweep_trials(runs_root: str, job_id: str, planned: list[dict], active: bool) -> list[dict]:
    """One row per planned trial, in grid order, with `best` set on the finished trial of lowest val loss.

    Row: run, rank, alpha, lr, dropout, targets, status (pending, running, done, stopped early, stopped or error),
    step (latest reported), val_loss (the best one for a finished trial, else the latest), rouge_l,
    trainable_parameters, samples_per_s, peak_memory_mb, checkpoint (a finished trial's best), best.
    `active`: whether the sweep job still runs (a trial with no final report is then running, not stopped).
    """
    final = _results(runs_root, job_id)
    rows = []
    for trial in planned:
        run = trial["run_name"]
        row = {"run": run, "rank": trial["lora_rank"], "alpha": trial["lora_alpha"], "lr": trial["lr"],
               "dropout": trial["lora_dropout"], "targets": trial.get("lora_targets"), "status": "pending",
               "step": None, "val_loss": None, "rouge_l": None, "trainable_parameters": None, "samples_per_s": None,
               "peak_memory_mb": None, "checkpoint": None}
        row.update(_progress(runs_root, job_id, run, active))
        if run in final:
            row.update({k: v for k, v in final[run].items() if k in row and k != "targets"})
        rows.append(row)
    finished = [r for r in rows if r["val_loss"] is not None and r["checkpoint"]]
    best = min(finished, key=lambda r: r["val_loss"])["run"] if finished else None
    return [{**row, "best": row["run"] == best} for row in rows]


def _progress(runs_root: str, job_id: str, run: str, active: bool) -> dict:
    """A trial's state from its own metrics log and its Tune reports, while the sweep runs or after."""
    fs, root = filesystem(runs_root)
    reports = tail_metrics(fs, metrics_path(join(root, run)))
    tune_reports = tail_metrics(fs, join(root, job_id, run, "result.json"))
    out: dict = {}
    if reports:
        latest = reports[-1]
        out = {"step": latest["step"], "val_loss": latest.get("val_loss"),
               **{k: latest.get(k) for k in ("trainable_parameters", "samples_per_s", "peak_memory_mb")}}
    last = tune_reports[-1] if tune_reports else {}
    if "rouge_l" in last:  # run_trial's last report: after training and scoring
        out.update({"status": "done", "val_loss": last.get("best_val_loss", out.get("val_loss")),
                    "rouge_l": last["rouge_l"], "checkpoint": last.get("checkpoint_path")})
    elif reports or tune_reports:
        out["status"] = "running" if active else "stopped"
    elif not active:
        out["status"] = "stopped"
    return out


def _results(runs_root: str, job_id: str) -> dict[str, dict]:
    """results.csv of a finished sweep, by run name; {} before the sweep ends (or if the file is unreadable)."""
    fs, root = filesystem(runs_root)
    path = join(root, job_id, RESULTS)
    try:
        if fs.get_file_info(path).type != pafs.FileType.File:
            return {}
        with fs.open_input_stream(path) as f:
            text = f.read(MAX_RESULTS_BYTES).decode()
        rows = {}
        for row in csv.DictReader(io.StringIO(text)):
            rows[row["run"]] = {key: _value(key, value) for key, value in row.items()}
        return rows
    except (ValueError, KeyError, TypeError) as err:
        logger.warning("Skipping %s: it is not the sweep's results table (%s).", path, err)
        return {}


def _value(key: str, text: str | None):
    if text in (None, ""):
        return None
    return NUMBERS[key](text) if key in NUMBERS else text
