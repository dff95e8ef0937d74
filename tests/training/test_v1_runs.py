"""DeepSeek-OCR v1 end to end on a real local Ray: training (LoRA and full, 2 DDP workers), evaluation,
export in the published layout, and serving, all on the tiny v1 in bf16 as stored.

Training loads the bf16-stored weights in float32 (the training default) under bf16 autocast;
evaluation, export and serving load them as stored, in bf16. The LoRA run reads A4 pages in gundam mode (a 1024 px global view plus six 640 px crops); the full
run reads 1024 px pages in base mode. One step each: with AdamW, a parameter that got a gradient
moves by about the learning rate, so "moved" (at lr 1e-2, past bf16's rounding) is "got a gradient".
"""

import json
from pathlib import Path

import pytest
import requests
import torch
from page_files import pdf_bytes
from peft import PeftModel
from safetensors import safe_open

from deepsynth.data.corpus import generate_corpus
from deepsynth.data.render import LAYOUTS, render_pages
from deepsynth.evaluation.metrics import rouge_scores
from deepsynth.export import export_checkpoint
from deepsynth.model.deepseek_ocr_v1 import DeepseekOcrV1Config
from deepsynth.model.loading import load_model_and_processor
from deepsynth.training.checkpoint import load_checkpoint
from ray_jobs import evaluate, train

VISION = ("model.sam_model.", "model.vision_model.", "model.projector.", "model.image_newline", "model.view_seperator")


def run(out, model_dir, *overrides):
    return train.main(["--config", "ray_jobs/configs/cpu_smoke.yaml", f"storage_path={out}", f"model={model_dir}",
                       "build_tiny_model=false", "num_workers=2", "batch_size=2", "max_steps=1", "eval_every=1",
                       "train_limit=4", "val_limit=2", "max_pages=1", "precision=bf16", *overrides])


@pytest.fixture(scope="module")
def lora_run(ray_cluster, tiny_v1_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("v1-lora")
    summary = run(out, tiny_v1_dir, "run_name=v1-lora", "layout=v1-gundam", "max_length=1200")
    return Path(summary["latest_checkpoint"])


def base_state(model_dir):
    model, _, family = load_model_and_processor(str(model_dir), v1_mode="gundam")
    return model, {n: p.detach().clone() for n, p in model.named_parameters()}


def test_lora_trains_every_adapter_on_gundam_crops_and_nothing_else(lora_run, tiny_v1_dir):
    base, state = base_state(tiny_v1_dir)
    assert base.dtype == torch.bfloat16
    meta = json.loads((lora_run / "meta.json").read_text())
    assert meta["family"] == "deepseek-ocr-v1"
    model = load_checkpoint(lora_run).model
    assert load_checkpoint(lora_run).family.mode.crop, "the v1-gundam layout loads gundam mode"
    lora = {n: p for n, p in model.named_parameters() if "lora_" in n}
    lora_b = {n: p for n, p in lora.items() if "lora_B" in n}
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b.values()), "every adapter got a gradient"
    # default targets: the decoder's attention, dense MLP and shared experts; no routed expert, no vision module.
    assert any(".shared_experts." in n for n in lora_b) and any(".self_attn.q_proj." in n for n in lora_b)
    assert not any(".experts." in n.replace(".shared_experts.", "") for n in lora)
    for name, param in model.named_parameters():
        if "lora_" not in name:
            base_name = name.replace("base_model.model.", "").replace(".base_layer", "")
            assert torch.equal(param, state[base_name]), f"{name} changed"
    assert any(name.startswith(VISION) for name in state)


def test_full_mode_trains_the_decoder_and_keeps_vision_bitwise(ray_cluster, tiny_v1_dir, tmp_path):
    summary = run(tmp_path, tiny_v1_dir, "run_name=v1-full", "mode=full", "layout=v1-base", "lr=1e-2")
    _, state = base_state(tiny_v1_dir)
    model = load_checkpoint(summary["latest_checkpoint"]).model
    trained = dict(model.named_parameters())
    for name, tensor in state.items():
        if name.startswith(VISION) or ".mlp.gate." in name:  # vision, projector and router stay frozen
            assert torch.equal(trained[name], tensor), f"{name} changed"
        elif ".mlp.experts." not in name:  # a routed expert the router never picked gets no gradient
            assert not torch.equal(trained[name], tensor), f"{name} got no gradient"
    experts = [n for n in state if ".mlp.experts." in n]
    assert any(not torch.equal(trained[n], state[n]) for n in experts)


def test_evaluation_scores_rouge_through_ray_jobs_evaluate(lora_run):
    result = evaluate.main(["--checkpoint", str(lora_run), "--limit", "4", "--max-new-tokens", "4",
                            "--batch-size", "2"])
    report = json.loads(Path(result["path"]).read_text())
    assert report["documents"] == 4
    rows = [json.loads(line) for line in (lora_run / "eval-builtin-test.predictions.jsonl").read_text().splitlines()]
    assert report["rouge"] == rouge_scores([r["prediction"] for r in rows], [r["reference"] for r in rows])


def test_exports_are_in_the_published_layout(lora_run, tiny_v1_dir, tmp_path):
    adapter = export_checkpoint(lora_run, tmp_path / "adapter")
    with safe_open(adapter / "adapter_model.safetensors", "pt") as f:
        keys = set(f.keys())
    assert keys and all(".model.layers." in k and "language_model" not in k for k in keys)
    trained = {n: p for n, p in load_checkpoint(lora_run).model.named_parameters() if "lora_" in n}
    base, _, _ = load_model_and_processor(str(tiny_v1_dir))
    loaded = {n: p for n, p in PeftModel.from_pretrained(base, adapter).named_parameters() if "lora_" in n}
    assert loaded.keys() == trained.keys()
    assert all(torch.equal(loaded[n], trained[n]) for n in trained), "the exported adapter loads as trained"

    merged = export_checkpoint(lora_run, tmp_path / "merged", merge=True)
    with safe_open(merged / "model.safetensors", "pt") as f, safe_open(tiny_v1_dir / "model.safetensors", "pt") as g:
        assert set(f.keys()) == set(g.keys()), "the published names, per-expert MLPs included"
    assert json.loads((merged / "config.json").read_text())["architectures"] == ["DeepseekOCRForCausalLM"]
    assert DeepseekOcrV1Config.from_pretrained(merged).language_config == DeepseekOcrV1Config.from_pretrained(
        tiny_v1_dir).language_config


def test_the_summarizer_serves_a_v1_checkpoint(serve_url, lora_run):
    from ray import serve

    from serve.summarizer import build_app

    args = {"checkpoint": str(lora_run), "device": "cpu", "max_pages": 1, "default_max_new_tokens": 4,
            "max_new_tokens_limit": 8, "num_cpus": 0.5, "ingress_num_cpus": 0.25, "request_timeout_s": 120}
    serve.run(build_app(args), name="summarizer-v1", route_prefix="/v1model")
    try:
        url = f"{serve_url}/v1model/v1/summarize"
        text = generate_corpus("test", 1, seed=5)[0]["text"]
        answer = requests.post(url, json={"text": text}, timeout=300)
        assert answer.status_code == 200, answer.text
        assert answer.json()["usage"]["summary_tokens"] >= 1
        family = load_checkpoint(lora_run).family
        pages = render_pages(text, LAYOUTS["v1-gundam"])
        assert answer.json()["usage"]["visual_tokens"] == family.count_visual_tokens(*pages[0].size) == 903
        pdf = requests.post(url, files=[("file", ("doc.pdf", pdf_bytes(pages[:1]), "application/pdf"))], timeout=300)
        assert pdf.status_code == 200, pdf.text
        assert pdf.json()["usage"]["pages"] == 1 and pdf.json()["usage"]["summary_tokens"] >= 1
    finally:
        serve.delete("summarizer-v1")
