"""Evaluate a checkpoint (or a base model) on a dataset split: ROUGE, lengths, compression, repetition.

    python -m ray_jobs.evaluate --checkpoint .deepsynth/runs/cpu-smoke/step-000008 --limit 20
    python -m ray_jobs.evaluate --model deepseek-community/DeepSeek-OCR-2 --dataset cnn_dailymail --split test

Documents are rendered to pages, summarized with batched `generate` (greedy or beam search,
with the repetition guard unless turned off) and scored with `rouge-score`. The JSON report
goes next to the checkpoint (`eval-<dataset>-<split>.json`) or to `--out`, with the
predictions beside it as JSONL; a table is printed.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from statistics import mean

from deepsynth.data.compression import compression_stats
from deepsynth.data.datasets import load_records
from deepsynth.data.render import get_layout, render_pages
from deepsynth.evaluation.generation import GenerationOptions, generate_summaries
from deepsynth.evaluation.metrics import mean_words, repetition_rate, rouge_scores
from deepsynth.model.loading import load_model_and_processor
from deepsynth.training.checkpoint import load_checkpoint


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a step-XXXXXX folder written by ray_jobs.train")
    source.add_argument("--model", help="a base model: hub id or local folder")
    parser.add_argument("--dataset", default="builtin")
    parser.add_argument("--split", default="test", choices=["train", "validation", "test"])
    parser.add_argument("--limit", type=int, default=20, help="documents to evaluate")
    parser.add_argument("--layout", default="ocr2-page")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--num-beams", type=int, default=1)
    parser.add_argument("--no-repeat-ngram-size", type=int, default=4, help="0 turns the n-gram guard off")
    parser.add_argument("--repetition-penalty", type=float, default=1.1, help="1.0 turns it off")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", help="report path (default: next to the checkpoint, or ./eval-*.json)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    try:
        options = GenerationOptions(args.max_new_tokens, args.num_beams, args.no_repeat_ngram_size,
                                    args.repetition_penalty)
        layout = get_layout(args.layout)
        records = load_records(args.dataset, args.split, args.limit)
    except ValueError as err:
        sys.exit(f"evaluate: error: {err}")
    if args.checkpoint:
        model, processor, family = load_checkpoint(args.checkpoint, device=args.device)
    else:
        model, processor, family = load_model_and_processor(args.model, device=args.device)
    model.eval()

    documents = [render_pages(record["text"], layout) for record in records]
    predictions = generate_summaries(model, processor, documents, options=options, batch_size=args.batch_size)
    references = [record["summary"] for record in records]
    compression = [compression_stats(r["text"], pages, family) for r, pages in zip(records, documents)]
    report = {
        "source": args.checkpoint or args.model,
        "dataset": args.dataset,
        "split": args.split,
        "documents": len(records),
        "generation": asdict(options),
        "rouge": rouge_scores(predictions, references),
        "prediction_words": mean_words(predictions),
        "reference_words": mean_words(references),
        "compression_ratio": mean(c.ratio for c in compression),
        "visual_tokens_per_document": mean(c.visual_tokens for c in compression),
        "repetition_rate": repetition_rate(predictions),
    }

    default_name = f"eval-{Path(args.dataset).stem}-{args.split}.json"
    out = Path(args.out) if args.out else Path(args.checkpoint or ".") / default_name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    with out.with_suffix(".predictions.jsonl").open("w") as f:
        for record, prediction in zip(records, predictions):
            f.write(json.dumps({"id": record["id"], "prediction": prediction, "reference": record["summary"]}) + "\n")

    print(f"{'metric':<28} value")
    for kind, value in report["rouge"].items():
        print(f"{kind:<28} {value:.4f}")
    for key in ("prediction_words", "reference_words", "compression_ratio", "repetition_rate"):
        print(f"{key:<28} {report[key]:.4f}")
    print(f"Report: {out}")
    return {**report, "path": str(out)}


if __name__ == "__main__":
    main()
