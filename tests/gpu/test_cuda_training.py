"""Training on CUDA: bf16, QLoRA with bitsandbytes kernels, DeepSpeed over NCCL (`make test-gpu`)."""

import subprocess
import sys

import pytest
import torch

from ray_jobs import train

pytestmark = pytest.mark.gpu
SMOKE = "ray_jobs/configs/cpu_smoke.yaml"


def run(tmp_path, model_dir, *overrides):
    return train.main(["--config", SMOKE, f"storage_path={tmp_path}", f"model={model_dir}", "build_tiny_model=false",
                       "use_gpu=true", "num_workers=1", "max_steps=4", "eval_every=4", *overrides])


def test_smoke_run_on_cuda_in_bf16(ray_cluster, tiny_model_dir, tmp_path):
    summary = run(tmp_path, tiny_model_dir, "run_name=cuda-bf16", "precision=bf16")
    assert summary["status"] == "finished" and summary["metrics"]["peak_memory_mb"] > 0
    assert summary["metrics"]["loss"] == summary["metrics"]["loss"]  # not NaN


def test_qlora_on_cuda(ray_cluster, tiny_model_dir, tmp_path):
    summary = run(tmp_path, tiny_model_dir, "run_name=cuda-qlora", "mode=qlora", "precision=bf16")
    assert summary["latest_checkpoint"].endswith("step-000004")


def test_deepspeed_zero2_over_nccl(ray_cluster, tiny_model_dir, tmp_path):
    workers = min(2, torch.cuda.device_count())
    summary = run(tmp_path, tiny_model_dir, "run_name=cuda-zero2", "strategy=deepspeed", "zero_stage=2",
                  "mode=full", "precision=bf16", f"num_workers={workers}")
    assert summary["latest_checkpoint"].endswith("step-000004")


def test_train_gpu_benchmark_runs():
    out = subprocess.run([sys.executable, "-m", "benchmarks.train_gpu", "--batch-sizes", "1", "2", "--steps", "2"],
                         capture_output=True, text=True, timeout=540)
    assert out.returncode == 0, out.stderr[-3000:]
    assert '"benchmark": "train_gpu"' in out.stdout
