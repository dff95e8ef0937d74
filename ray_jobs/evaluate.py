"""Evaluate a checkpoint (or a base model) on a dataset split: ROUGE, lengths, compression, repetition.

    python -m ray_jobs.evaluate --checkpoint .deepsynth/runs/cpu-smoke/step-000008 --limit 20
    python -m ray_jobs.evaluate --model deepseek-community/DeepSeek-OCR-2 --benchmark cnn_dailymail --limit 1000 --ray-data
    ray job submit --working-dir . -- python -m ray_jobs.evaluate --checkpoint s3://.../step-000500 --benchmark xsum --ray-data

Documents are rendered to pages, summarized with batched `generate` (greedy or beam search,
with the repetition guard unless turned off) and scored with `rouge-score`. The layout, page
limit, prompt and generation settings are the checkpoint's template (what it was trained with)
unless a flag sets them; documents over the page limit are truncated (`--long-documents`), and
the report says how many, and which template it used. With `--ray-data`
the documents stream through Ray Data: rendering tasks, then `--concurrency` model replicas
(one GPU each with `--device cuda`, or `auto` on a cluster with GPUs). A benchmark preset names
the dataset and split and adds the published reference scores to the report. The JSON report goes next to the
checkpoint (`eval-<dataset>-<split>.json`) or to `--out`, with the predictions beside it as
JSONL; a table is printed, then the report as one JSON line. `deepsynth eval` takes the same arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, fields
from pathlib import Path
from statistics import mean

import numpy as np
import ray

from deepsynth.data.compression import compression_stats
from deepsynth.data.datasets import load_records
from deepsynth.data.long_documents import LONG_DOCUMENT_POLICIES, apply_long_document_policy
from deepsynth.data.pages import decode_pages, render_batch
from deepsynth.data.render import count_pages, get_layout, render_pages
from deepsynth.evaluation.benchmarks import BENCHMARKS
from deepsynth.evaluation.config import EvalConfig
from deepsynth.evaluation.generation import generate_summaries
from deepsynth.evaluation.metrics import mean_words, repetition_rate, rouge_scores
from deepsynth.logs import LOG_FORMATS, configure_logging, logger, ray_init_logging
from deepsynth.template import Template
from deepsynth.training.checkpoint import load_source, local_checkpoint, read_template


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    # The flags' defaults are EvalConfig's, the class the job API validates evaluate jobs against.
    defaults = {f.name: f.default for f in fields(EvalConfig)}
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a step-XXXXXX folder written by ray_jobs.train, or its s3:// / gs:// URI")
    source.add_argument("--model", help="a base model: hub id or local folder")
    parser.add_argument("--benchmark", choices=sorted(BENCHMARKS), help="a preset: dataset, split, reference scores")
    parser.add_argument("--dataset", default="builtin", help="ignored with --benchmark")
    parser.add_argument("--split", default="test", choices=["train", "validation", "test"], help="ignored with --benchmark")
    parser.add_argument("--limit", type=int, default=defaults["limit"], help="documents to evaluate")
    template = "default: the checkpoint's template"
    parser.add_argument("--layout", default=defaults["layout"], help=template)
    parser.add_argument("--max-pages", type=int, default=defaults["max_pages"], help=template)
    parser.add_argument("--long-documents", default=defaults["long_documents"], choices=LONG_DOCUMENT_POLICIES,
                        help="what happens to documents over max pages")
    parser.add_argument("--prompt", default=defaults["prompt"], help=template)
    parser.add_argument("--batch-size", type=int, default=defaults["batch_size"])
    parser.add_argument("--max-new-tokens", type=int, default=defaults["max_new_tokens"], help=template)
    parser.add_argument("--num-beams", type=int, default=defaults["num_beams"], help=template)
    parser.add_argument("--no-repeat-ngram-size", type=int, default=defaults["no_repeat_ngram_size"],
                        help=f"0 turns the n-gram guard off; {template}")
    parser.add_argument("--repetition-penalty", type=float, default=defaults["repetition_penalty"],
                        help=f"1.0 turns it off; {template}")
    parser.add_argument("--device", default=defaults["device"],
                        help="cpu, cuda or auto; with --ray-data, cuda (or auto on a cluster with GPUs) gives each "
                        "replica a GPU")
    parser.add_argument("--ray-data", action="store_true", help="stream documents through Ray Data model replicas")
    parser.add_argument("--concurrency", type=int, default=defaults["concurrency"], help="model replicas with --ray-data")
    parser.add_argument("--out", help="report path (default: next to the checkpoint, or ./eval-*.json)")
    parser.add_argument("--log-format", default=defaults["log_format"], choices=LOG_FORMATS,
                        help="text, or json: one JSON object per line")
    return parser.parse_args(argv)


class Summarizer:
    """A Ray Data model replica: rendered rows in, rows with `prediction` and token counts out."""

    def __init__(self, checkpoint: str | None, model: str | None, template: Template, device: str):
        self.model, self.processor, self.family, _ = load_source(checkpoint, model, device=device)
        self.template = template

    def __call__(self, batch: dict) -> dict:
        documents = [decode_pages(pages) for pages in batch["pages"]]
        texts = [str(text) for text in batch["text"]]
        results = summarize(self.model, self.processor, self.family, texts, documents, self.template, len(documents))
        for key in results[0]:
            batch[key] = np.array([result[key] for result in results], dtype=object)
        del batch["pages"]
        return batch


def summarize(model, processor, family, texts: list[str], documents: list[list], template: Template,
              batch_size: int) -> list[dict]:
    """Each document's prediction and its text and visual token counts."""
    predictions = generate_summaries(model, processor, documents, options=template.generation, prompt=template.prompt,
                                     batch_size=batch_size, family=family)
    results = []
    for text, pages, prediction in zip(texts, documents, predictions):
        stats = compression_stats(text, pages, family)
        results.append({"prediction": prediction, "text_tokens": stats.text_tokens, "visual_tokens": stats.visual_tokens})
    return results


def summarize_in_process(args, records: list[dict], template: Template) -> list[dict]:
    model, processor, family, _ = load_source(args.checkpoint, args.model, device=args.device)
    texts = [record["text"] for record in records]
    layout = get_layout(template.layout)
    documents = [render_pages(text, layout, template.max_pages, truncate=True) for text in texts]
    results = summarize(model, processor, family, texts, documents, template, args.batch_size)
    return [{**record, **result} for record, result in zip(records, results)]


def summarize_with_ray_data(args, records: list[dict], template: Template) -> list[dict]:
    ray.init(ignore_reinit_error=True, **ray_init_logging(args.log_format))
    # The driver may run on a CPU-only head node, so "auto" asks the cluster, not this process's torch.
    # An explicit cuda reserves GPUs even while none is up, for the autoscaler to add a GPU node.
    use_gpu = args.device.startswith("cuda") or (args.device == "auto" and ray.cluster_resources().get("GPU", 0) > 0)
    device = "cuda" if use_gpu else "cpu"  # a replica sees only the GPU it reserved, as cuda:0
    rows = (
        ray.data.from_items(records)
        .map_batches(render_batch, fn_kwargs={"layout": template.layout, "max_pages": template.max_pages,
                                              "truncate": True}, batch_size=args.batch_size)
        .map_batches(Summarizer, fn_constructor_kwargs={"checkpoint": args.checkpoint, "model": args.model,
                                                        "template": template, "device": device},
                     batch_size=args.batch_size, concurrency=args.concurrency, num_gpus=1 if use_gpu else 0)
        .take_all()
    )
    order = {record["id"]: i for i, record in enumerate(records)}
    return sorted(rows, key=lambda row: order[row["id"]])


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.log_format == "json":
        # Ray's JSON formatter is installed by ray.init, so JSON logs need Ray even in-process.
        ray.init(ignore_reinit_error=True, **ray_init_logging("json"))
    configure_logging(args.log_format, source=args.checkpoint or args.model)
    benchmark = BENCHMARKS.get(args.benchmark) if args.benchmark else None
    dataset, split = (benchmark.dataset, benchmark.split) if benchmark else (args.dataset, args.split)
    try:
        trained = read_template(args.checkpoint) if args.checkpoint else Template()
        template = trained.with_overrides(
            layout=args.layout, max_pages=args.max_pages, prompt=args.prompt, max_new_tokens=args.max_new_tokens,
            num_beams=args.num_beams, no_repeat_ngram_size=args.no_repeat_ngram_size,
            repetition_penalty=args.repetition_penalty)
        records = load_records(dataset, split, args.limit)
        layout = get_layout(template.layout)
        records, long_documents = apply_long_document_policy(
            records, [count_pages(record["text"], layout) for record in records],
            max_pages=template.max_pages, policy=args.long_documents)
        if not records:
            raise ValueError(f"every document is longer than max_pages={template.max_pages} and "
                             f"--long-documents={args.long_documents} left none; use --long-documents truncate.")
    except (ValueError, RuntimeError, FileNotFoundError) as err:
        sys.exit(f"evaluate: error: {err}")
    rows = (summarize_with_ray_data if args.ray_data else summarize_in_process)(args, records, template)

    predictions = [str(row["prediction"]) for row in rows]
    references = [row["summary"] for row in rows]
    report = {
        "source": args.checkpoint or args.model,
        "dataset": dataset,
        "split": split,
        "documents": len(rows),
        "template": {"layout": template.layout, "max_pages": template.max_pages, "prompt": template.prompt},
        "long_documents": long_documents.to_dict(),
        "generation": asdict(template.generation),
        "rouge": rouge_scores(predictions, references),
        "prediction_words": mean_words(predictions),
        "reference_words": mean_words(references),
        "compression_ratio": mean(int(r["text_tokens"]) / int(r["visual_tokens"]) for r in rows),
        "visual_tokens_per_document": mean(int(r["visual_tokens"]) for r in rows),
        "repetition_rate": repetition_rate(predictions),
        "reference": asdict(benchmark) if benchmark and benchmark.reference_rouge else None,
    }
    default_name = f"eval-{Path(dataset).stem}-{split}.json"
    # Next to the checkpoint, or for a checkpoint in cloud storage next to its local copy.
    beside = local_checkpoint(args.checkpoint) if args.checkpoint else Path(".")
    out = Path(args.out) if args.out else beside / default_name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    with out.with_suffix(".predictions.jsonl").open("w") as f:
        for row, prediction in zip(rows, predictions):
            f.write(json.dumps({"id": row["id"], "prediction": prediction, "reference": row["summary"]}) + "\n")

    reference = benchmark.reference_rouge if benchmark else None
    logger.info(f"{'metric':<28} {'value':>8}" + (f"  {benchmark.reference_model} (published)" if reference else ""))
    for kind, value in report["rouge"].items():
        published = f"  {reference[kind] / 100:.4f}" if reference else ""
        logger.info(f"{kind:<28} {value:>8.4f}{published}")
    for key in ("prediction_words", "reference_words", "compression_ratio", "repetition_rate"):
        logger.info(f"{key:<28} {report[key]:.4f}")
    logger.info(f"{'template':<28} layout {template.layout}, max_pages {template.max_pages}, prompt {template.prompt!r}")
    logger.info(f"{'long documents':<28} {long_documents.skipped} skipped, {long_documents.truncated} truncated "
                f"(--long-documents {args.long_documents})")
    logger.info(f"Report: {out}")
    result = {**report, "path": str(out)}
    logger.info(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
