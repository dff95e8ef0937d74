"""What the repetition guard costs per generated token, at 1 and 8 pages, against no guard and HF's guards.

    python -m benchmarks.generation_guard [--tokens 64] [--repeats 7]

The tiny DeepSeek-OCR-2 (float32, so the model's own step is as cheap as it gets and the
guard's share as large as it gets) generates exactly `--tokens` tokens (`min_new_tokens` =
`max_new_tokens`) for a 1-page and an 8-page document (145 and 1160 visual tokens). The time per
generated token is (time for N tokens - time for 1 token) / (N - 1), so the prefill cancels; the
median over `--repeats` interleaved runs is reported, since this machine's speed drifts.

Three settings: no guard; ours (`WindowedNGramBan` 4 within 64 generated tokens plus the
repetition penalty over generated tokens, the defaults); and HF's `no_repeat_ngram_size=4` and
`repetition_penalty=1.1`, which scan the whole sequence, prompt included. Target: ours costs at
most 10 % over no guard at 8 pages.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from transformers import NoRepeatNGramLogitsProcessor, RepetitionPenaltyLogitsProcessor

from benchmarks.common import report
from deepsynth.data.corpus import generate_corpus
from deepsynth.data.render import LAYOUTS, render_pages
from deepsynth.evaluation.generation import GenerationOptions, generate_summaries
from deepsynth.model.loading import load_model_and_processor
from deepsynth.model.tiny import build_tiny_model

OFF = GenerationOptions(no_repeat_ngram_size=0, repetition_penalty=1.0)
SETTINGS = {
    "no guard": (OFF, ()),
    "ours (generated tokens, window 64)": (GenerationOptions(), ()),
    "HF (whole sequence)": (OFF, (NoRepeatNGramLogitsProcessor(4), RepetitionPenaltyLogitsProcessor(1.1))),
}


def seconds(model, processor, pages, options: GenerationOptions, processors, tokens: int) -> float:
    forced = replace(options, max_new_tokens=tokens, min_new_tokens=tokens)
    started = time.perf_counter()
    generate_summaries(model, processor, [pages], options=forced, logits_processor=processors)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        model, processor, family = load_model_and_processor(str(build_tiny_model(Path(tmp) / "tiny")), dtype="float32")
    page = render_pages(generate_corpus("test", 1)[0]["text"], LAYOUTS["ocr2-page"])[0]
    documents = {1: [page], 8: [page] * 8}

    for pages in documents.values():  # warm-up: the first calls pay for allocations and caches
        for options, processors in SETTINGS.values():
            seconds(model, processor, pages, options, processors, 2)
    per_token: dict[tuple[int, str], list[float]] = {}
    for _ in range(args.repeats):
        for num_pages, pages in documents.items():
            for name, (options, processors) in SETTINGS.items():
                long = seconds(model, processor, pages, options, processors, args.tokens)
                short = seconds(model, processor, pages, options, processors, 1)
                per_token.setdefault((num_pages, name), []).append((long - short) / (args.tokens - 1))

    rows, ratios = [], {}
    for num_pages, pages in documents.items():
        base = statistics.median(per_token[(num_pages, "no guard")])
        for name in SETTINGS:
            median = statistics.median(per_token[(num_pages, name)])
            ratios[(num_pages, name)] = median / base
            rows.append({"pages": num_pages, "visual_tokens": family.count_visual_tokens(*page.size) * num_pages,
                         "guard": name, "ms_per_token": 1000 * median, "vs_no_guard": median / base})
    report("generation_guard", rows, {
        "ours_vs_off_8_pages": ratios[(8, "ours (generated tokens, window 64)")],
        "ours_vs_off_1_page": ratios[(1, "ours (generated tokens, window 64)")],
        "hf_vs_off_8_pages": ratios[(8, "HF (whole sequence)")],
        "target": 1.10, "tokens": args.tokens, "repeats": args.repeats,
    })


if __name__ == "__main__":
    main()
