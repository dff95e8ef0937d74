import subprocess
import sys
from pathlib import Path

import torch

from deepsynth.model.loading import load_model_and_processor

DEEPSYNTH = str(Path(sys.executable).parent / "deepsynth")  # the installed console script


def run(*args):
    return subprocess.run([DEEPSYNTH, *args], capture_output=True, text=True, timeout=300)


def test_init_tiny_writes_a_loadable_model_folder(tmp_path):
    out = tmp_path / "tiny"
    result = run("model", "init-tiny", str(out), "--seed", "1")
    assert result.returncode == 0, result.stderr
    assert str(out) in result.stdout
    assert {"config.json", "model.safetensors", "processor_config.json", "tokenizer.json", "README.md"} <= {
        p.name for p in out.iterdir()
    }
    model, processor, _ = load_model_and_processor(str(out))
    assert processor.image_token_id == model.config.image_token_id
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}, "stored in bf16, like the published weights"


def test_init_tiny_can_store_float32(tmp_path):
    result = run("model", "init-tiny", str(tmp_path / "tiny"), "--dtype", "float32")
    assert result.returncode == 0, result.stderr
    model, _, _ = load_model_and_processor(str(tmp_path / "tiny"))  # dtype="auto": the stored dtype
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_init_tiny_into_a_model_folder_fails_with_a_clear_message(tiny_model_dir):
    result = run("model", "init-tiny", str(tiny_model_dir))
    assert result.returncode == 2
    assert "already holds a model" in result.stderr
    assert "Traceback" not in result.stderr


def test_init_tiny_builds_a_v1_with_the_published_weight_names(tmp_path):
    out = tmp_path / "tiny-v1"
    result = run("model", "init-tiny", str(out), "--family", "deepseek-ocr", "--dtype", "float32")
    assert result.returncode == 0, result.stderr
    assert "DeepSeek-OCR v1" in result.stdout
    model, _, family = load_model_and_processor(str(out))
    assert type(model).__name__ == "DeepseekOCRForCausalLM" and family.name == "deepseek-ocr-v1"
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert '"model.sam_model.blocks.0.norm1.weight"' in (out / "model.safetensors").read_bytes()[:100_000].decode(
        "latin-1")
