"""Throughput and latency of the summarization endpoint under load, against in-process batched `generate`.

    python -m benchmarks.serve_load [--model tiny|medium] [--max-new-tokens 16] [--concurrency 1 8 16 32]
    python -m benchmarks.serve_load --gpu      # full-size DeepSeek-OCR-2, random weights, bf16 on CUDA
    python -m benchmarks.serve_load --gpu --engine hf vllm   # both engines, same documents; needs the vllm extra

Starts its own Ray and Serve (127.0.0.1, a free port), deploys `serve.summarizer:build_app`
with `max_batch_size` = the in-process batch size, and drives `POST /v1/summarize` with JSON
text of one page (built-in corpus) from closed-loop clients at each concurrency: every client
sends its next request when the last one is answered. Per level: requests/s (= pages/s),
p50/p99 latency and the mean batch the server formed. The baseline is the same model, loaded
in this process, summarizing pre-rendered pages with `generate_summaries` at the same batch
size and options (`--max-new-tokens`, greedy): it has no HTTP, rendering, queueing or
serialization, so the ratio is what the server keeps of the model's batched speed.

Targets: Serve at concurrency 16 >= 0.8x in-process batch 16; batching gain (Serve c=16 / c=1) >= 4x.
The model replica gets `--replica-cpus` CPUs (Ray sets its torch threads to that) and the ingress
and proxy share the rest of the machine; the in-process baseline runs before Serve starts.
`--gpu` serves the published DeepSeek-OCR-2 sizes with random weights (nothing is downloaded) in
bf16 on one GPU, 1-page documents, 128-token summaries, concurrency 1/8/32; it needs CUDA.
`--engine vllm` serves the same model exported in the original layout through the vLLM engine
(`engine: vllm`, the same ingress); with `--engine hf vllm` both run on the same documents and
levels, one after the other, and the figures add vLLM's pages/s over HF's at concurrency 32
(target >= 3x) and vLLM's generated tokens/s there (DeepSeek publishes about 2,500 tokens/s on one
A100-40G for DeepSeek-OCR; the figure is for the GPU named in `gpu`).
"""

import argparse
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import ray
import requests
import torch
from ray import serve

from benchmarks.common import build_medium_model, report
from deepsynth.data.corpus import generate_corpus
from deepsynth.data.render import get_layout, render_pages
from deepsynth.evaluation.generation import GenerationOptions, generate_summaries
from deepsynth.export import export_original
from deepsynth.model.loading import load_model_and_processor
from deepsynth.model.tiny import build_full_width_model, build_tiny_model
from serve.summarizer import build_app


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def in_process(model_dir: str, texts: list[str], batch_size: int, options: GenerationOptions, device: str,
               dtype: str) -> float:
    """Documents per second of batched generate_summaries on pre-rendered pages (after one warm-up batch)."""
    model, processor, _ = load_model_and_processor(model_dir, device=device, dtype=dtype)
    model.eval()
    documents = [render_pages(text, get_layout("ocr2-page"), max_pages=1) for text in texts]
    generate_summaries(model, processor, documents[:batch_size], options=options, batch_size=batch_size)
    _sync(device)
    started = time.perf_counter()
    generate_summaries(model, processor, documents, options=options, batch_size=batch_size)
    _sync(device)
    seconds = time.perf_counter() - started
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return len(documents) / seconds


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()  # a CPU-GPU sync point, so the timer sees all queued kernels


def serve_level(url: str, texts: list[str], concurrency: int, max_new_tokens: int) -> dict:
    """Closed-loop load: `concurrency` clients send `texts` in turn; throughput, latency and batch sizes."""

    def call(text: str) -> tuple[float, int, int]:
        started = time.perf_counter()
        response = requests.post(f"{url}/v1/summarize", json={"text": text, "max_new_tokens": max_new_tokens},
                                 timeout=600)
        response.raise_for_status()
        usage = response.json()["usage"]
        return time.perf_counter() - started, usage["batch_size"], usage["summary_tokens"]

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(call, texts[:concurrency]))  # warm-up: one request per client
        started = time.perf_counter()
        results = list(pool.map(call, texts))
        wall = time.perf_counter() - started
    latencies = sorted(latency for latency, _, _ in results)
    return {
        "concurrency": concurrency,
        "requests": len(texts),
        "pages_per_s": len(texts) / wall,
        "p50_s": statistics.median(latencies),
        "p99_s": latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))],
        "mean_batch": statistics.mean(batch for _, batch, _ in results),
        "tokens_per_s": sum(tokens for _, _, tokens in results) / wall,
    }


def deploy(engine: str, model_dir: str, export_dir: str | None, device: str, dtype: str, args: argparse.Namespace,
           levels: list[int], max_new_tokens: int) -> None:
    engine_args = ({"engine": "vllm", "vllm_model": export_dir, "max_num_beams": 1,
                    "vllm_gpu_memory_utilization": 0.85} if engine == "vllm" else {})
    serve.run(build_app({
        "model": model_dir, "device": device, "dtype": dtype, "num_cpus": args.replica_cpus,
        "num_gpus": 1 if args.gpu else 0, "max_batch_size": args.batch_size,
        "batch_wait_timeout_s": args.batch_wait, "max_ongoing_requests": max(2 * args.batch_size, *levels),
        "max_queued_requests": -1, "max_new_tokens_limit": max(512, max_new_tokens), "request_timeout_s": 600,
        **engine_args,
    }), name="summarizer", route_prefix="/")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["tiny", "medium"], default="tiny",
                        help="tiny: the offline test model; medium: ~100M parameters (benchmarks.common)")
    parser.add_argument("--gpu", action="store_true", help="full-size DeepSeek-OCR-2 on CUDA in bf16")
    parser.add_argument("--engine", nargs="+", choices=["hf", "vllm"], default=["hf"],
                        help="the summarizer's engine(s), measured one after the other on the same documents "
                             "(vllm needs --gpu and the vllm extra)")
    parser.add_argument("--layers", type=int, default=12, help="--gpu: decoder layers of the full-width model")
    parser.add_argument("--concurrency", type=int, nargs="+", default=None)
    parser.add_argument("--batch-size", type=int, default=16, help="server max_batch_size and in-process batch")
    parser.add_argument("--batch-wait", type=float, default=0.1, help="server batch_wait_timeout_s")
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=3, help="requests per level = rounds x max(concurrency, 4)")
    parser.add_argument("--replica-cpus", type=float, default=2.0)
    args = parser.parse_args()
    if args.gpu and not torch.cuda.is_available():
        raise SystemExit("serve_load --gpu needs CUDA; run it on a GPU machine.")
    if "vllm" in args.engine and not args.gpu:
        raise SystemExit("serve_load --engine vllm runs on CUDA only; add --gpu on a GPU machine.")
    engines = list(dict.fromkeys(args.engine))
    levels = sorted(set(args.concurrency or ([1, 8, 32] if args.gpu else [1, 8, 16, 32])) | {1, args.batch_size})
    max_new_tokens = args.max_new_tokens or (128 if args.gpu else 16)
    device, dtype = ("cuda", "bfloat16") if args.gpu else ("cpu", "float32")
    options = GenerationOptions(max_new_tokens=max_new_tokens)
    texts = [doc["text"] for doc in generate_corpus("test", args.rounds * max(*levels, args.batch_size), seed=1)]

    with tempfile.TemporaryDirectory() as tmp:
        if args.gpu:
            model_dir = str(build_full_width_model(Path(tmp) / "model", num_layers=args.layers, device="cuda"))
        elif args.model == "medium":
            build_medium_model(Path(tmp))
            model_dir = str(Path(tmp) / "model")
        else:
            model_dir = str(build_tiny_model(Path(tmp) / "tiny"))
        export_dir = str(export_original(model_dir, Path(tmp) / "original")) if "vllm" in engines else None

        def baseline() -> tuple[float, float]:
            """In-process pages/s at batch 1 and at the server's batch size."""
            single = in_process(model_dir, texts[: args.rounds * 4], 1, options, device, dtype)
            return single, in_process(model_dir, texts[: args.rounds * args.batch_size], args.batch_size, options,
                                      device, dtype)

        before = baseline() if "hf" in engines else None
        ray.init(num_cpus=max(4, int(args.replica_cpus) + 2), include_dashboard=False)
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        measured: dict[str, dict[int, dict]] = {}
        for engine in engines:
            deploy(engine, model_dir, export_dir, device, dtype, args, levels, max_new_tokens)
            measured[engine] = {c: serve_level(f"http://127.0.0.1:{port}", texts[: args.rounds * max(c, 4)], c,
                                               max_new_tokens) for c in levels}
            serve.delete("summarizer")  # frees the GPU for the next engine
        serve.shutdown()
        ray.shutdown()
        # A shared CPU machine's speed drifts, so the baseline runs before and after Serve and is
        # averaged; a GPU is ours alone.
        after = before if args.gpu or before is None else baseline()

    rows = []
    figures: dict = {"model": f"full-size, {args.layers} layers (random weights)" if args.gpu else args.model,
                     "device": device, "gpu": torch.cuda.get_device_name(0) if args.gpu else None,
                     "engines": engines, "max_new_tokens": max_new_tokens, "batch_size": args.batch_size,
                     "batch_wait_s": args.batch_wait, "load_average_1m": os.getloadavg()[0]}
    if before is not None:
        single, batched = (before[0] + after[0]) / 2, (before[1] + after[1]) / 2
        rows += [
            {"mode": "in-process generate", "concurrency": "-", "batch": 1, "pages_per_s": single,
             "p50_s": 1 / single, "p99_s": "-", "mean_batch": 1.0},
            {"mode": "in-process generate", "concurrency": "-", "batch": args.batch_size, "pages_per_s": batched,
             "p50_s": args.batch_size / batched, "p99_s": "-", "mean_batch": float(args.batch_size)},
        ]
        hf = measured["hf"]
        at_batch = hf[args.batch_size]["pages_per_s"]
        figures.update(serve_vs_in_process=at_batch / batched, serve_vs_in_process_target=0.8,
                       batching_gain=at_batch / hf[1]["pages_per_s"], batching_gain_target=4.0,
                       in_process_batch_gain=batched / single)
    for engine, by_level in measured.items():
        rows += [{"mode": f"Serve HTTP ({engine})", "concurrency": c, "batch": args.batch_size if engine == "hf"
                  else "continuous", "pages_per_s": level["pages_per_s"], "p50_s": level["p50_s"],
                  "p99_s": level["p99_s"], "mean_batch": level["mean_batch"]} for c, level in by_level.items()]
    if set(measured) == {"hf", "vllm"}:
        top = max(levels)
        figures.update({
            f"vllm_vs_hf_c{top}": measured["vllm"][top]["pages_per_s"] / measured["hf"][top]["pages_per_s"],
            "vllm_vs_hf_target": 3.0,
            f"vllm_vs_hf_p50_c{top}": measured["vllm"][top]["p50_s"] / measured["hf"][top]["p50_s"],
        })
    if "vllm" in measured:
        figures.update(vllm_tokens_per_s=measured["vllm"][max(levels)]["tokens_per_s"],
                       deepseek_a100_40g_tokens_per_s=2500)
    figures["levels"] = measured["hf"] if engines == ["hf"] else measured
    report("serve_gpu" if args.gpu else "serve_load", rows, figures)


if __name__ == "__main__":
    main()
