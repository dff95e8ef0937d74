"""Training as the real checkpoint's settings need it: long documents, even validation, fp16, the template.

Runs go through `ray_jobs/train.py` on the shared local Ray cluster with the tiny model.
"""

import json
from pathlib import Path

import pytest
import torch

from deepsynth.data.corpus import generate_corpus
from deepsynth.data.render import LAYOUTS, count_pages
from deepsynth.training.checkpoint import read_meta, read_template
from deepsynth.training.loop import autocast_dtype
from deepsynth.training.strategy import deepspeed_config
from ray_jobs import train

SMOKE = "ray_jobs/configs/cpu_smoke.yaml"


def run(tmp_path, model_dir, *overrides):
    return train.main(["--config", SMOKE, f"storage_path={tmp_path}", f"model={model_dir}", "build_tiny_model=false",
                       *overrides])


def records(tmp_path, run_name):
    lines = (Path(tmp_path) / run_name / "logs" / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_overlong_documents_are_skipped_counted_and_never_fatal(ray_cluster, tiny_model_dir, tmp_path):
    docs = [{"text": d["text"], "summary": d["summary"]} for d in generate_corpus("train", 30)]
    long_text = " ".join(docs[0]["text"] for _ in range(12))  # about 12 pages at ocr2-page
    assert count_pages(long_text, LAYOUTS["ocr2-page"]) > 6
    for position in (3, 20):  # one inside the 8 validation documents, one outside
        docs.insert(position, {"text": long_text, "summary": "Too long"})
    data = tmp_path / "mixed.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))

    summary = run(tmp_path, tiny_model_dir, "run_name=long", f"dataset={data}", "max_pages=6", "max_steps=2",
                  "eval_every=2", "log_every=1", "val_limit=8")
    assert summary["status"] == "finished"
    assert summary["metrics"]["skipped_documents"] == 2
    assert summary["metrics"]["val_skipped_documents"] == 1
    assert summary["metrics"]["truncated_documents"] == 0
    assert records(tmp_path, "long")[0]["skipped_documents"] == 2


@pytest.mark.slow  # a 2-worker and a 1-worker run, about 50 s
def test_uneven_validation_shards_run_in_step_and_score_only_real_documents(ray_cluster, tiny_model_dir, tmp_path):
    # 7 documents over 2 workers in batches of 3: rank 0 has 2 batches (3 + 1), rank 1 one (3), so rank 1
    # pads. Unpadded, DDP's buffer broadcast in the second forward would wait for rank 1 forever.
    common = ["val_limit=7", "batch_size=3", "train_limit=12", "max_steps=1", "eval_every=1", "lora_dropout=0.0"]
    two = run(tmp_path, tiny_model_dir, "run_name=two", "num_workers=2", *common)
    one = run(tmp_path, tiny_model_dir, "run_name=one", "num_workers=1", *common)
    assert two["status"] == one["status"] == "finished"
    # Before any step the LoRA model is the base model, so both score the same 7 documents.
    initial_two, initial_one = records(tmp_path, "two")[0]["val_loss"], records(tmp_path, "one")[0]["val_loss"]
    assert initial_two == pytest.approx(initial_one, rel=1e-6)


@pytest.mark.slow  # a run and its resume, about 1 minute
def test_fp16_trains_with_loss_scaling_and_resumes_the_scaler(ray_cluster, tiny_model_dir, tmp_path):
    summary = run(tmp_path, tiny_model_dir, "run_name=fp16", "precision=fp16", "num_workers=1", "max_steps=2",
                  "eval_every=2", "log_every=1", "mode=full")
    state = torch.load(Path(summary["latest_checkpoint"]) / "optimizer.pt", weights_only=False)
    assert state["scaler"]["scale"] > 1.0, state["scaler"]  # dynamic scaling, starting at 2**16
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records(tmp_path, "fp16") if "loss" in r)
    resumed = run(tmp_path, tiny_model_dir, "run_name=fp16", "precision=fp16", "num_workers=1", "max_steps=3",
                  "eval_every=3", "log_every=1", "mode=full")
    assert read_meta(resumed["latest_checkpoint"])["step"] == 3


def test_precision_auto_is_bf16_or_fp32_and_deepspeed_scales_fp16():
    assert autocast_dtype("auto", torch.device("cpu")) is None
    assert autocast_dtype("fp16", torch.device("cpu")) == torch.float16
    fp16 = deepspeed_config(zero_stage=2, micro_batch_size=2, grad_accum=1, grad_clip=1.0, amp_dtype=torch.float16)
    assert fp16["fp16"] == {"enabled": True, "loss_scale": 0, "initial_scale_power": 16}
    assert not fp16["bf16"]["enabled"]
    bf16 = deepspeed_config(zero_stage=3, micro_batch_size=2, grad_accum=1, grad_clip=1.0, amp_dtype=torch.bfloat16)
    assert bf16["bf16"]["enabled"] and not bf16["fp16"]["enabled"]


def test_the_checkpoint_carries_its_template(a4_checkpoint):
    template = read_template(a4_checkpoint)
    assert (template.layout, template.max_pages, template.prompt) == ("ocr2-a4", 2, "Write the headline.")
    assert read_meta(a4_checkpoint)["template"]["generation"]["no_repeat_ngram_size"] == 4


def test_preparation_skips_and_counts_long_documents_and_records_keep_their_page_counts(
        ray_cluster, tiny_model_dir, tmp_path):
    from deepsynth.data.datasets import load_records
    from deepsynth.data.pages import page_counts
    from ray_jobs import prepare_dataset

    docs = [{"text": d["text"], "summary": d["summary"]} for d in generate_corpus("train", 6)]
    docs.append({"text": "\n".join([docs[0]["text"]] * 4), "summary": "Too long"})  # 4 pages at ocr2-page
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    result = prepare_dataset.main(["--name", "long", "--source", str(data), "--max-pages", "2", "--model",
                                   str(tiny_model_dir), "--output", str(tmp_path)])
    manifest = json.loads((tmp_path / "datasets" / "long" / "manifest.json").read_text())
    assert manifest["long_documents"] == {"policy": "skip", "skipped": 2, "truncated": 0}  # train and validation
    assert manifest["splits"]["train"]["long_documents"]["skipped"] == 1
    assert result["documents"] == 12
    prepared = load_records(f"prepared:{tmp_path / 'datasets' / 'long'}", "train")
    assert page_counts(prepared, "ocr2-page") == [1] * 6  # read from the shards, not recounted
