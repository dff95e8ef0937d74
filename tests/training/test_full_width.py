"""The published DeepSeek-OCR-2's widths on this machine: a 3-layer slice through training, reload and generation.

The slice has every width, the 64 experts and the whole vision tower of the real model (1.29 B
parameters, bf16, random weights): what passes here passes with the real model's shapes and dtypes.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from deepsynth.data.render import get_layout, render_pages
from deepsynth.evaluation.generation import GenerationOptions, generate_token_ids
from deepsynth.model.quantize import Nf4Experts
from deepsynth.model.tiny import build_full_width_model
from deepsynth.training.checkpoint import load_checkpoint, load_trained_weights
from deepsynth.training.modes import load_for_training, prepare_trainable
from ray_jobs import train

pytestmark = pytest.mark.slow  # about 10 minutes on 2 cores: three 1.3 B-parameter runs, reloads, generation, memory

ONE_PAGE = "Rail traffic in inland towns fell 2.1 percent in the third quarter."


@pytest.fixture(scope="module")
def full_width_dir(tmp_path_factory):
    return build_full_width_model(tmp_path_factory.mktemp("full-width") / "model", num_layers=3)


@pytest.mark.parametrize("mode", ["lora", "qlora", "full"])
def test_a_step_a_reload_and_eight_generated_tokens(ray_cluster, full_width_dir, tmp_path, mode):
    summary = train.main([
        "--config", "ray_jobs/configs/cpu_smoke.yaml", f"storage_path={tmp_path}", f"model={full_width_dir}",
        "build_tiny_model=false", f"run_name=wide-{mode}", f"mode={mode}", "dtype=bfloat16", "num_workers=1",
        "cpus_per_worker=2", "batch_size=1", "max_steps=1", "eval_every=1", "train_limit=1", "val_limit=1",
        "max_pages=1", "layout=ocr2-page", "max_length=1024",
    ])
    assert summary["status"] == "finished"
    rows = [json.loads(line) for line in (tmp_path / f"wide-{mode}" / "logs" / "metrics.jsonl").read_text().splitlines()]
    [step] = [row for row in rows if "loss" in row]
    assert step["step"] == 1 and torch.isfinite(torch.tensor(step["loss"]))

    checkpoint = Path(summary["latest_checkpoint"])
    loaded = load_checkpoint(checkpoint, dtype="auto")
    assert next(loaded.model.parameters()).dtype == torch.bfloat16
    pages = render_pages(ONE_PAGE, get_layout("ocr2-page"))
    assert len(pages) == 1
    [ids] = generate_token_ids(loaded.model, loaded.processor, [pages],
                               options=GenerationOptions(max_new_tokens=8, min_new_tokens=8))
    assert len(ids) == 8

    if mode == "qlora":
        # Resume's path: the adapter goes back onto a 4-bit base, whose routed experts are 4-bit too.
        model, _, family = load_for_training(str(full_width_dir), "qlora", dtype="bfloat16", device="cpu",
                                             compute_dtype=torch.bfloat16)
        assert all(isinstance(layer.mlp.experts, Nf4Experts) for layer in model.model.language_model.layers[1:])
        model, _ = prepare_trainable(model, family, "qlora", rank=8, alpha=16)
        load_trained_weights(model, checkpoint, "qlora")


def test_qlora_costs_less_than_bf16_lora_on_the_slice():
    """benchmarks/train_memory.py --model full-width: each mode in its own process, weight bytes and peak memory."""
    done = subprocess.run([sys.executable, "-m", "benchmarks.train_memory", "--model", "full-width", "--steps", "2",
                           "--batch-size", "1"], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    print(done.stdout)
    assert figures["qlora_vs_lora_weights"] <= figures["targets"]["qlora_vs_lora_weights"] == 0.75
    assert figures["qlora_vs_lora_peak"] <= figures["targets"]["qlora_vs_lora_peak"] == 0.85
