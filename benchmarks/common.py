"""Shared output for the benchmark scripts: a readable table, then one JSON line for machines."""

from __future__ import annotations

import json
import platform

import torch


def machine() -> dict:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def report(name: str, rows: list[dict], summary: dict) -> None:
    """Print `rows` as a table and `summary` (with the machine) as the last line, in JSON."""
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(_fmt(r[c])) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(_fmt(row[c]).ljust(widths[c]) for c in columns))
    print(json.dumps({"benchmark": name, **summary, "machine": machine()}))


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
