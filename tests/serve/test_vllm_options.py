"""`engine: vllm` settings, checked on CPU without vLLM: clear errors for every bad combination, the recipe's settings.

The engine itself needs CUDA and vLLM; tests/gpu/test_vllm_engine.py serves through it.
"""

import pytest
from safetensors import safe_open

from deepsynth.evaluation.generation import GenerationOptions
from deepsynth.export import export_original
from deepsynth.serving.config import ServeConfig, check_vllm_model, load_serve_config
from deepsynth.serving.engine import SummaryJob
from deepsynth.serving.vllm_engine import (
    engine_args,
    prompt_text,
    sampling_kwargs,
    vllm_adapter_dir,
    vllm_installed,
)
from serve.summarizer import build_app


@pytest.fixture(scope="module")
def tiny_export(tiny_model_dir, tmp_path_factory):
    return export_original(tiny_model_dir, tmp_path_factory.mktemp("export") / "tiny")


def vllm_args(model_dir, export, **overrides):
    return {"model": str(model_dir), "engine": "vllm", "vllm_model": str(export), "num_gpus": 1,
            "max_num_beams": 1, **overrides}


@pytest.mark.skipif(vllm_installed(), reason="checks the error where vLLM is not installed")
def test_build_app_without_vllm_names_the_extra(tiny_model_dir, tiny_export):
    with pytest.raises(ValueError, match=r"install the `vllm` extra \(pip install 'deepsynth\[vllm\]'"):
        build_app(vllm_args(tiny_model_dir, tiny_export))


def test_bad_engine_combinations_are_clear_errors(tiny_model_dir, tiny_export):
    bad = [
        ({"engine": "trt"}, "engine: Input should be 'hf' or 'vllm'"),
        ({"vllm_model": None}, "engine=vllm needs vllm_model=<folder>"),
        ({"num_gpus": 0}, "engine=vllm runs on CUDA: set num_gpus > 0"),
        ({"device": "cpu"}, "engine=vllm runs on CUDA"),
        ({"max_num_beams": 4}, "engine=vllm decodes greedily"),
        ({"engine": "hf"}, "vllm_model is read only with engine=vllm"),
        ({"vllm_gpu_memory_utilization": 1.5}, "vllm_gpu_memory_utilization: Input should be less than or equal to 1"),
    ]
    for override, message in bad:
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
            load_serve_config(vllm_args(tiny_model_dir, tiny_export, **override))


def test_vllm_model_must_be_a_runnable_export_of_the_served_model(tiny_model_dir, tiny_export, lora_checkpoint,
                                                                   tmp_path):
    def check(**args):
        check_vllm_model(ServeConfig.model_validate(vllm_args(tiny_model_dir, tiny_export, **args)))

    with pytest.raises(ValueError, match="is not an original-layout export"):
        check(vllm_model=str(tiny_model_dir))
    with pytest.raises(ValueError, match="was exported from .* but the served model is"):
        check(model=None, checkpoint=str(lora_checkpoint))
    # The tiny model's vision tower is not the one vLLM builds in, and the error says so.
    with pytest.raises(ValueError, match="cannot run on vLLM.*sam patch_size is 32, vLLM builds 16"):
        check()
    merged = export_original(lora_checkpoint, tmp_path / "merged")
    with pytest.raises(ValueError, match="vllm_model holds a merged LoRA checkpoint"):
        check(model=None, checkpoint=str(lora_checkpoint), vllm_model=str(merged),
              adapters={"other": str(lora_checkpoint)})


def test_engine_and_sampling_settings_follow_the_recipe(tiny_model_dir, tiny_export, lora_checkpoint):
    config = ServeConfig.model_validate(vllm_args(tiny_model_dir, tiny_export, adapters={"a": str(lora_checkpoint)},
                                                  max_pages=6, max_loaded_adapters=3))
    args = engine_args(config, max_model_len=8192)
    assert args["model"] == str(tiny_export) and args["max_model_len"] == 8192
    assert args["enable_prefix_caching"] is False and args["mm_processor_cache_gb"] == 0
    assert args["logits_processors"] == ["vllm.model_executor.models.deepseek_ocr:NGramPerReqLogitsProcessor"]
    assert args["limit_mm_per_prompt"] == {"image": 6}
    assert (args["enable_lora"], args["max_loras"]) == (True, 3)
    assert args["max_num_seqs"] == config.max_ongoing_requests and args["dtype"] == "bfloat16"

    options = GenerationOptions(max_new_tokens=40, min_new_tokens=2, no_repeat_ngram_size=4, ngram_window=64,
                                repetition_penalty=1.1)
    job = SummaryJob(pages=[object(), object()], options=options, prompt="Summarize the document.", adapter=None)
    assert prompt_text(job) == "<image>\n<image>\nSummarize the document."
    ours = sampling_kwargs(job, "template", whitelist=[7, 8])
    assert ours["extra_args"] == {"ngram_size": 4, "window_size": 64}
    assert (ours["temperature"], ours["max_tokens"], ours["min_tokens"], ours["repetition_penalty"]) == (0.0, 40, 2,
                                                                                                        1.1)
    recipe = sampling_kwargs(job, "recipe", whitelist=[7, 8])
    assert recipe["extra_args"] == {"ngram_size": 30, "window_size": 90, "whitelist_token_ids": [7, 8]}
    off = SummaryJob(pages=[], options=GenerationOptions(no_repeat_ngram_size=0), prompt="p", adapter=None)
    assert sampling_kwargs(off, "template", [])["extra_args"] == {}


def test_adapters_from_a_storage_uri_become_vllm_adapters_once(lora_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPSYNTH_CACHE", str(tmp_path / "cache"))
    folder = vllm_adapter_dir(lora_checkpoint.resolve().as_uri())  # file://, the path s3:// and gs:// take
    with safe_open(folder / "adapter_model.safetensors", "pt") as f:
        keys = set(f.keys())
    exported = export_original(lora_checkpoint, tmp_path / "export")
    with safe_open(exported / "adapter" / "adapter_model.safetensors", "pt") as f:
        assert keys == set(f.keys()) and all(".model.layers." in key for key in keys)
    written = (folder / "adapter_model.safetensors").stat().st_mtime_ns
    assert vllm_adapter_dir(lora_checkpoint.resolve().as_uri()) == folder
    assert (folder / "adapter_model.safetensors").stat().st_mtime_ns == written, "converted once, then reused"
