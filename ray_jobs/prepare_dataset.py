"""Render a dataset ahead of training: Parquet shards of page images plus a manifest of compression statistics.

    python -m ray_jobs.prepare_dataset --name builtin-50 --limit 25
    python -m ray_jobs.prepare_dataset --name news --source cnn_dailymail --splits train,validation --limit 5000 \\
        --model deepseek-community/DeepSeek-OCR-2 --output s3://bucket/deepsynth
    ray job submit --working-dir . -- python -m ray_jobs.prepare_dataset --name builtin-full

Documents are read with `load_records` (builtin, a preset or a local file), counted in pages
(documents over `--max-pages` are skipped, truncated or an error, `--long-documents`, and counted
in the manifest), rendered to PNG pages by Ray Data tasks (`render_batch`), measured (text tokens with the model's tokenizer, visual
tokens from its processor) and written to `<output>/datasets/<name>/<split>/*.parquet`, with
`manifest.json` beside them; Ray Data shows a progress bar. `<output>` is `--output`, else
`$DEEPSYNTH_STORAGE`, else `.deepsynth`. Train on it with `dataset=prepared:<output>/datasets/<name>`.
The last line printed is a JSON summary.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray

from deepsynth.data.datasets import load_records
from deepsynth.data.long_documents import LONG_DOCUMENT_POLICIES, apply_long_document_policy
from deepsynth.data.pages import page_counts, render_batch
from deepsynth.data.prepared import (
    PrepareConfig,
    add_compression_stats,
    filesystem,
    join,
    summarize_stats,
    write_manifest,
)
from deepsynth.logs import LOG_FORMATS, configure_logging, logger, ray_init_logging

STAT_COLUMNS = ["id", "num_pages", "text_tokens", "visual_tokens", "ratio"]


def parse_args(argv: list[str] | None) -> tuple[PrepareConfig, str, str]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    defaults = {f.name: f.default for f in dataclasses.fields(PrepareConfig)}
    parser.add_argument("--name", required=True, help="folder name under <output>/datasets/")
    parser.add_argument("--source", default=defaults["source"], help="builtin, a preset or a local data file")
    parser.add_argument("--splits", default="train,validation", help="comma-separated splits to render")
    parser.add_argument("--limit", type=int, help="documents per split (default: the whole split)")
    parser.add_argument("--seed", type=int, default=defaults["seed"])
    parser.add_argument("--text-field")
    parser.add_argument("--summary-field")
    parser.add_argument("--layout", default=defaults["layout"])
    parser.add_argument("--max-pages", type=int, default=defaults["max_pages"])
    parser.add_argument("--long-documents", default=defaults["long_documents"], choices=LONG_DOCUMENT_POLICIES,
                        help="what happens to documents over --max-pages")
    parser.add_argument("--model", default=defaults["model"], help="model whose tokenizer and processor count tokens")
    parser.add_argument("--trust-remote-code", action="store_true")
    parser.add_argument("--rows-per-shard", type=int, default=defaults["rows_per_shard"])
    parser.add_argument("--output", help="root folder or URI (default: $DEEPSYNTH_STORAGE or .deepsynth)")
    parser.add_argument("--log-format", choices=LOG_FORMATS, default="text", help="json: one JSON object per line")
    args = parser.parse_args(argv)
    try:
        config = PrepareConfig(
            name=args.name, source=args.source, splits=[s.strip() for s in args.splits.split(",") if s.strip()],
            limit=args.limit, seed=args.seed, text_field=args.text_field, summary_field=args.summary_field,
            layout=args.layout, max_pages=args.max_pages, long_documents=args.long_documents, model=args.model,
            trust_remote_code=args.trust_remote_code,
            rows_per_shard=args.rows_per_shard,
        )
    except ValueError as err:
        parser.error(str(err))
    return config, args.output or os.environ.get("DEEPSYNTH_STORAGE") or ".deepsynth", args.log_format


def prepare_split(config: PrepareConfig, split: str, folder: str) -> dict:
    """Render one split to `folder/<split>/`; return its shards and per-document statistics."""
    records = load_records(config.source, split, config.limit, seed=config.seed,
                           text_field=config.text_field, summary_field=config.summary_field)
    if not records:
        raise ValueError(f"{config.source!r} has no documents in split {split!r}.")
    records, long_documents = apply_long_document_policy(records, page_counts(records, config.layout),
                                                         max_pages=config.max_pages, policy=config.long_documents)
    if not records:
        raise ValueError(f"Every document of split {split!r} is longer than max_pages={config.max_pages}; raise "
                         "--max-pages or use --long-documents truncate.")
    split_dir = join(folder, split)
    # The folder has no manifest (main checked), so anything in it is a failed run's leftovers, which
    # the manifest would otherwise list beside this run's shards.
    fs, path = filesystem(split_dir)
    fs.delete_dir_contents(path, missing_dir_ok=True)
    # Ray Data may otherwise write blocks in completion order; the manifest lists rows in shard order.
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    (
        ray.data.from_items(records)
        .map_batches(render_batch, fn_kwargs={"layout": config.layout, "max_pages": config.max_pages,
                                              "truncate": config.long_documents == "truncate"}, batch_size=16)
        .map_batches(add_compression_stats, fn_kwargs={"model": config.model, "layout": config.layout,
                                                       "trust_remote_code": config.trust_remote_code}, batch_size=16)
        .write_parquet(split_dir, min_rows_per_file=config.rows_per_shard)
    )
    files = sorted(info.base_name for info in fs.get_file_info(pafs.FileSelector(path))
                   if info.base_name.endswith(".parquet"))
    shards, documents = [], []
    for name in files:
        table = pq.read_table(join(path, name), columns=STAT_COLUMNS, filesystem=fs)
        rows = table.to_pylist()
        shards.append({"file": name, "documents": len(rows)})
        documents.extend({**row, "shard": name, "row": i} for i, row in enumerate(rows))
    return {"documents": len(documents), "shards": shards, "summary": summarize_stats(documents),
            "long_documents": long_documents.to_dict(), "per_document": documents}


def main(argv: list[str] | None = None) -> dict:
    config, output, log_format = parse_args(argv)
    folder = join(output if "://" in output else os.path.abspath(output), "datasets", config.name)
    fs, path = filesystem(folder)
    if fs.get_file_info(join(path, "manifest.json")).type != pafs.FileType.NotFound:
        sys.exit(f"prepare_dataset: error: {folder} already holds a prepared dataset; choose another --name.")
    if not ray.is_initialized():
        ray.init(**ray_init_logging(log_format))  # joins RAY_ADDRESS or the job's cluster, else starts a local one
    configure_logging(log_format, run_name=config.name)
    # Progress bars redraw one terminal line; in JSON logs they would be stray text.
    ray.data.DataContext.get_current().enable_progress_bars = log_format == "text"
    splits = {split: prepare_split(config, split, folder) for split in config.splits}
    every = [doc for s in splits.values() for doc in s["per_document"]]
    manifest = {
        "name": config.name, "source": config.source, "layout": config.layout, "max_pages": config.max_pages,
        "long_documents": {"policy": config.long_documents,
                           "skipped": sum(s["long_documents"]["skipped"] for s in splits.values()),
                           "truncated": sum(s["long_documents"]["truncated"] for s in splits.values())},
        "model": config.model, "seed": config.seed, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "columns": ["id", "text", "summary", "pages", *STAT_COLUMNS[1:]],
        "splits": splits, "summary": summarize_stats(every),
    }
    # The manifest is written last: a folder without one is unfinished, and listings skip it.
    write_manifest(folder, manifest)
    result = {"name": config.name, "path": folder, "documents": len(every), **manifest["summary"],
              "long_documents": manifest["long_documents"]}
    logger.info(f"\nPrepared {len(every)} documents ({result['pages']} pages) at {folder}; "
                f"text/visual token ratio {result['ratio']:.2f}. Train on it with dataset=prepared:{folder}")
    long = manifest["long_documents"]
    if long["skipped"] or long["truncated"]:
        logger.info(f"Documents over {config.max_pages} pages: {long['skipped']} skipped, "
                    f"{long['truncated']} truncated.")
    logger.info(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
