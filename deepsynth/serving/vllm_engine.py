"""The summarizer's vLLM engine (`engine: vllm`): vLLM's async engine inside our model deployment.

The ingress stays ours (limits, rendering, usage, errors, the `/v1/summarize` contract); only the
model replica changes. It runs an `AsyncLLMEngine` over the served model exported in the original
layout (`deepsynth export --format original`, the layout vLLM registers as
`DeepseekOCR2ForCausalLM`) with continuous batching and a paged KV cache, each request going in
on its own as it arrives. The settings follow vLLM's DeepSeek-OCR recipe: its n-gram
logits processor (our template's windowed guard, or the recipe's 30 within 90 with `<td>` and
`</td>` allowed to repeat), no prefix caching and no multimodal processor cache. LoRA adapters
are the same checkpoints (local, `s3://` or `gs://`) the HF engine serves; each is converted once
to the original module names and served by name as a vLLM `LoRARequest`.

vLLM needs CUDA and is an optional extra (`pip install 'deepsynth[vllm]'`, the default of the GPU
image); `engine_args` and `sampling_kwargs` are plain functions, so the settings are tested on CPU.

    engine = VllmEngine(config)                 # in the model replica
    result = await engine.summarize(job)
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from safetensors.torch import load_file

from deepsynth.export import write_vllm_adapter
from deepsynth.model.original_layout import OCR2_ORIGINAL
from deepsynth.serving.config import ServeConfig
from deepsynth.serving.engine import SummaryJob, SummaryResult
from deepsynth.training.checkpoint import ADAPTER_DIR, local_checkpoint, read_meta

VLLM_EXTRA = "pip install 'deepsynth[vllm]'"
NGRAM_PROCESSOR = "vllm.model_executor.models.deepseek_ocr:NGramPerReqLogitsProcessor"
# vLLM's DeepSeek-OCR recipe: no 30-gram repeats within 90 tokens, except table cells.
RECIPE_NGRAM_SIZE, RECIPE_NGRAM_WINDOW, RECIPE_WHITELIST = 30, 90, ("<td>", "</td>")


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def engine_args(config: ServeConfig, max_model_len: int) -> dict[str, Any]:
    """`AsyncEngineArgs` keyword arguments for `config` (vLLM's DeepSeek-OCR recipe settings)."""
    return {
        "model": config.vllm_model,
        "tokenizer": config.vllm_model,
        "dtype": "bfloat16" if config.dtype == "auto" else config.dtype,
        "max_model_len": max_model_len,
        "gpu_memory_utilization": config.vllm_gpu_memory_utilization,
        "max_num_seqs": config.max_ongoing_requests,
        "limit_mm_per_prompt": {"image": config.max_pages},
        # The recipe's: cached prefixes and processed images buy nothing for one-off documents.
        "enable_prefix_caching": False,
        "mm_processor_cache_gb": 0,
        "logits_processors": [NGRAM_PROCESSOR],
        "enforce_eager": config.vllm_enforce_eager,
        "enable_lora": bool(config.adapters),
        "max_loras": config.max_loaded_adapters,
        "max_lora_rank": config.vllm_max_lora_rank,
        "seed": 0,
    }


def sampling_kwargs(job: SummaryJob, ngram: str, whitelist: list[int]) -> dict[str, Any]:
    """`SamplingParams` keyword arguments for one job: greedy, its lengths and repetition settings."""
    options = job.options
    if ngram == "recipe":
        extra = {"ngram_size": RECIPE_NGRAM_SIZE, "window_size": RECIPE_NGRAM_WINDOW, "whitelist_token_ids": whitelist}
    elif options.no_repeat_ngram_size:
        extra = {"ngram_size": options.no_repeat_ngram_size, "window_size": options.ngram_window}
    else:
        extra = {}
    return {"temperature": 0.0, "max_tokens": options.max_new_tokens, "min_tokens": options.min_new_tokens,
            "repetition_penalty": options.repetition_penalty, "skip_special_tokens": True, "extra_args": extra}


def prompt_text(job: SummaryJob) -> str:
    # One placeholder line per page, as the HF engine's processor prompt (deepsynth.model.families).
    return "<image>\n" * len(job.pages) + job.prompt


def vllm_adapter_dir(checkpoint: str) -> Path:
    """A LoRA checkpoint (local or s3/gs) as a vLLM adapter folder in the original module names, cached."""
    local = local_checkpoint(checkpoint)
    cache = Path(os.environ.get("DEEPSYNTH_CACHE", Path.home() / ".cache" / "deepsynth")) / "vllm-adapters"
    out = cache / hashlib.sha256(str(local.resolve()).encode()).hexdigest()[:16]
    if (out / "adapter_model.safetensors").exists():
        return out
    tensors = OCR2_ORIGINAL.adapter(load_file(local / ADAPTER_DIR / "adapter_model.safetensors"))
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    write_vllm_adapter(local / ADAPTER_DIR, tensors, tmp, OCR2_ORIGINAL.lora_modules, read_meta(local)["base_model"])
    try:
        tmp.rename(out)
    except OSError:
        # Another replica on this node converted it first; theirs is the same.
        shutil.rmtree(tmp)
    return out


class VllmEngine:
    """One vLLM engine per model replica; `summarize` runs one job, vLLM batches the jobs in flight."""

    def __init__(self, config: ServeConfig, max_model_len: int) -> None:
        from transformers import AutoTokenizer
        from vllm import AsyncEngineArgs, AsyncLLMEngine
        from vllm.lora.request import LoRARequest

        self.config = config
        self.engine = AsyncLLMEngine.from_engine_args(AsyncEngineArgs(**engine_args(config, max_model_len)))
        tokenizer = AutoTokenizer.from_pretrained(config.vllm_model)
        self.eos = tokenizer.eos_token_id
        vocab = tokenizer.get_vocab()
        self.whitelist = [vocab[token] for token in RECIPE_WHITELIST if token in vocab]
        self.lora = {name: LoRARequest(name, index, str(vllm_adapter_dir(path)))
                     for index, (name, path) in enumerate(sorted(config.adapters.items()), 1)}
        self.in_flight = 0

    async def summarize(self, job: SummaryJob) -> SummaryResult:
        from vllm import SamplingParams

        started = time.monotonic()
        self.in_flight += 1
        batch_size = self.in_flight
        try:
            request = {"prompt": prompt_text(job), "multi_modal_data": {"image": list(job.pages)}}
            params = SamplingParams(**sampling_kwargs(job, self.config.vllm_ngram, self.whitelist))
            final = None
            # Cancelling this coroutine (the ingress's deadline) makes vLLM abort the request.
            async for output in self.engine.generate(request, params, uuid.uuid4().hex,
                                                     lora_request=self.lora.get(job.adapter)):
                final = output
        finally:
            self.in_flight -= 1
        completion = final.outputs[0]
        tokens = list(completion.token_ids)
        if tokens and tokens[-1] == self.eos:
            tokens = tokens[:-1]  # like the HF engine, EOS is not a summary token
        return SummaryResult(summary=completion.text.strip(), summary_tokens=len(tokens), batch_size=batch_size,
                             queue_s=started - job.received, generate_s=time.monotonic() - started)
