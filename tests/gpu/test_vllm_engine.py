"""The summarizer's `engine: vllm` on CUDA (`make test-gpu`, needs the vllm extra).

A full-width DeepSeek-OCR-2 (the published vision tower and widths, 2 decoder layers, random
weights: vLLM builds the published vision tower in) is exported in the original layout and served
through the same ingress; text, a PNG and a PDF come back with the HF engine's response schema,
and an exported-format LoRA adapter is served by name.
"""

import json
import subprocess
import sys

import pytest
import requests
import torch

from deepsynth.data.corpus import generate_corpus
from deepsynth.data.render import LAYOUTS, render_pages
from deepsynth.export import export_original
from deepsynth.model.loading import load_model_and_processor
from deepsynth.model.tiny import build_full_width_model
from deepsynth.serving.schemas import SummarizeResponse
from deepsynth.training.checkpoint import save_checkpoint, trained_state_dict
from deepsynth.training.config import TrainConfig
from deepsynth.training.modes import prepare_trainable
from page_files import pdf_bytes, png_bytes

pytestmark = pytest.mark.gpu
TEXT = generate_corpus("test", 1, seed=5)[0]["text"]


@pytest.fixture(scope="module")
def vllm_app(serve_url, tmp_path_factory):
    pytest.importorskip("vllm", reason="needs the vllm extra: pip install 'deepsynth[vllm]'")
    from ray import serve

    from serve.summarizer import build_app

    root = tmp_path_factory.mktemp("vllm")
    model_dir = build_full_width_model(root / "model", num_layers=2, device="cuda")
    # A LoRA checkpoint on that base (lora_targets: default, the set vLLM adapts), perturbed as if trained.
    model, processor, family = load_model_and_processor(str(model_dir), device="cuda")
    model, _ = prepare_trainable(model, family, "lora", rank=8, alpha=16)
    generator = torch.Generator(device="cuda").manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=generator, device=p.device, dtype=p.dtype) * 0.5)
    config = TrainConfig(model=str(model_dir), mode="lora", run_name="vllm-lora", lora_rank=8, lora_alpha=16)
    adapter = save_checkpoint(root / "lora", 5, model=model, processor=processor, config=config,
                              family_name=family.name, metrics={"val_loss": 1.0}, weights=trained_state_dict(model))
    del model
    torch.cuda.empty_cache()
    export = export_original(model_dir, root / "original")
    assert json.loads((export / "deepsynth.json").read_text())["vllm_incompatibilities"] == []
    serve.run(build_app({
        "model": str(model_dir), "engine": "vllm", "vllm_model": str(export), "num_gpus": 1, "max_num_beams": 1,
        "adapters": {"tuned": str(adapter)}, "vllm_enforce_eager": True, "vllm_gpu_memory_utilization": 0.6,
        "default_max_new_tokens": 16, "request_timeout_s": 300, "max_pages": 4,
    }), name="summarizer-vllm", route_prefix="/vllm")
    yield f"{serve_url}/vllm", family
    serve.delete("summarizer-vllm")


def summarize(url, **kwargs) -> dict:
    response = requests.post(f"{url}/v1/summarize", timeout=300, **kwargs)
    assert response.status_code == 200, response.text
    body = SummarizeResponse.model_validate(response.json())  # the HF engine's schema, field for field
    assert set(response.json()) == set(SummarizeResponse.model_fields)
    return body.model_dump()


def test_vllm_engine_serves_text_png_and_pdf_with_the_same_schema(vllm_app):
    url, family = vllm_app
    text = summarize(url, json={"text": TEXT, "max_new_tokens": 12})
    pages = render_pages(TEXT, LAYOUTS["ocr2-page"])
    assert text["usage"]["pages"] == len(pages) and 0 < text["usage"]["summary_tokens"] <= 12
    assert text["usage"]["visual_tokens"] == sum(family.count_visual_tokens(*p.size) for p in pages)
    page = pages[0]
    png = summarize(url, files={"file": ("page.png", png_bytes(page), "image/png")}, data={"max_new_tokens": "8"})
    assert png["usage"]["pages"] == 1 and png["usage"]["source_text_tokens"] is None
    pdf = summarize(url, files={"file": ("doc.pdf", pdf_bytes(pages[:2]), "application/pdf")})
    assert pdf["usage"]["pages"] == min(2, len(pages)) and pdf["usage"]["summary_tokens"] <= 16
    # The ingress's refusals are the same too.
    assert requests.post(f"{url}/v1/summarize", json={"text": " "}, timeout=30).status_code == 422


def test_an_exported_lora_adapter_is_served_by_name(vllm_app):
    url, _ = vllm_app
    base = summarize(url, json={"text": TEXT, "max_new_tokens": 16})
    tuned = summarize(url, json={"text": TEXT, "max_new_tokens": 16, "adapter": "tuned"})
    assert tuned["adapter"] == "tuned" and base["adapter"] is None
    assert tuned["summary"] != base["summary"], "the adapter changes what the model writes"
    assert requests.get(f"{url}/v1/stats", timeout=30).json()["model"]["loaded_adapters"] == ["tuned"]
    missing = requests.post(f"{url}/v1/summarize", json={"text": TEXT, "adapter": "nope"}, timeout=30)
    assert missing.status_code == 404 and missing.json()["error"] == "adapter_not_found"


@pytest.mark.slow
def test_vllm_engine_meets_its_ratio_over_hf():
    out = subprocess.run([sys.executable, "-m", "benchmarks.serve_load", "--gpu", "--engine", "hf", "vllm",
                          "--rounds", "2"], check=False, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["vllm_vs_hf_c32"] >= result["vllm_vs_hf_target"] == 3.0, result
