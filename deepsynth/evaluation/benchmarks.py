"""Evaluation benchmark presets: a dataset and split, with published scores to compare against.

The reference scores are the text-only summarizers' published ROUGE F1 (x100) on each test set,
so a report can show how reading the pages compares with reading the text.

    preset = BENCHMARKS["cnn_dailymail"]      # dataset, split, reference model and its ROUGE
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Benchmark:
    dataset: str
    """A dataset preset of deepsynth.data.datasets (or "builtin")."""
    split: str
    reference_model: str | None = None
    """The published system the reference scores come from."""
    reference_rouge: dict[str, float] | None = None
    """Its ROUGE-1/2/L F1, x100, as published."""
    source: str | None = None


BENCHMARKS: dict[str, Benchmark] = {
    "cnn_dailymail": Benchmark("cnn_dailymail", "test", "BART-large",
                               {"rouge1": 44.16, "rouge2": 21.28, "rougeL": 40.90}, "Lewis et al. 2020, BART"),
    "xsum": Benchmark("xsum", "test", "PEGASUS-large",
                      {"rouge1": 47.21, "rouge2": 24.56, "rougeL": 39.25}, "Zhang et al. 2020, PEGASUS"),
    "arxiv": Benchmark("arxiv", "test", "PEGASUS-large",
                       {"rouge1": 44.21, "rouge2": 16.95, "rougeL": 25.67}, "Zhang et al. 2020, PEGASUS"),
    "billsum": Benchmark("billsum", "test", "PEGASUS-large",
                         {"rouge1": 59.67, "rouge2": 41.58, "rougeL": 47.59}, "Zhang et al. 2020, PEGASUS"),
    "builtin": Benchmark("builtin", "test"),
}
