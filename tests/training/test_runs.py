"""Whole training runs on a real local Ray cluster with the tiny model (`ray_jobs/train.py`).

Runs are kept to a few steps on small data; each checks what a user relies on: checkpoints that
load, a frozen vision tower, exact resume after a stop, DDP and DeepSpeed giving the same training.
"""

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from deepsynth.model.loading import load_model_and_processor
from deepsynth.training.checkpoint import load_checkpoint
from deepsynth.training.control import stop_signal_name
from ray_jobs import train

SMOKE = "ray_jobs/configs/cpu_smoke.yaml"


def run(tmp_path, model_dir, *overrides):
    return train.main(["--config", SMOKE, f"storage_path={tmp_path}", f"model={model_dir}", "build_tiny_model=false",
                       *overrides])


def steps_logged(tmp_path, run_name) -> list[dict]:
    """Every training-step line of the run's metrics log, in order: a repeated step shows twice."""
    lines = (Path(tmp_path) / run_name / "logs" / "metrics.jsonl").read_text().splitlines()
    return [row for row in map(json.loads, lines) if "loss" in row]


def metrics(tmp_path, run_name):
    rows = [json.loads(line) for line in (Path(tmp_path) / run_name / "logs" / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row for row in rows if "loss" in row}, rows[0]


def summary_of(output: str) -> dict:
    """The JSON summary line that ray_jobs.train prints last (Ray may log after it)."""
    lines = [line for line in output.splitlines() if line.startswith('{"run"')]
    assert lines, output[-3000:]
    return json.loads(lines[-1])


def vision_tensors(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if ".vision_tower." in f".{n}"}


@pytest.fixture(scope="module")
def smoke(ray_cluster, tiny_model_dir, tmp_path_factory):
    """The CPU smoke config: 2 workers x batch 2, LoRA, 8 steps."""
    out = tmp_path_factory.mktemp("smoke")
    return out, run(out, tiny_model_dir, "run_name=smoke")


def test_smoke_run_writes_complete_checkpoints_and_learns(smoke):
    out, summary = smoke
    assert summary["status"] == "finished"
    checkpoint = Path(summary["latest_checkpoint"])
    assert checkpoint.name == "step-000008"
    expected = {"adapter", "meta.json", "train_config.yaml", "optimizer.pt", "rank-0.pt", "rank-1.pt",
                "processor_config.json", "tokenizer.json"}
    assert expected <= {p.name for p in checkpoint.iterdir()}
    assert not list(checkpoint.parent.glob("*.tmp"))
    meta = json.loads((checkpoint / "meta.json").read_text())
    assert meta["step"] == 8 and meta["mode"] == "lora" and "transformers" in meta["versions"]

    steps, first = metrics(out, "smoke")
    assert sorted(steps) == list(range(1, 9))
    for row in steps.values():
        for key in ("loss", "lr", "samples_per_s", "tokens_per_s", "visual_tokens_per_s", "data_wait_share",
                    "peak_memory_mb"):
            assert math.isfinite(row[key]), key
    assert steps[8]["loss"] < steps[1]["loss"]
    assert steps[8]["val_loss"] < first["val_loss"]
    assert 0 < first["trainable_share"] < 0.1


def test_lora_checkpoint_changes_only_the_adapter(smoke, tiny_model_dir):
    _, summary = smoke
    base, _, _ = load_model_and_processor(str(tiny_model_dir))
    base_state = {n: p.detach().clone() for n, p in base.named_parameters()}
    model = load_checkpoint(summary["latest_checkpoint"]).model
    lora = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert lora and any(p.abs().sum() > 0 for n, p in lora.items() if "lora_B" in n), "the adapter trained"
    assert not any("vision_tower" in n for n in lora), "no adapter on the vision tower"
    assert not any(".mlp.experts." in n for n in lora), "lora_targets: default adapts no routed expert"
    for name, param in model.named_parameters():
        if "lora_" in name:
            continue
        base_name = name.replace("base_model.model.", "").replace(".base_layer", "")
        assert torch.equal(param, base_state[base_name]), f"{name} changed"


def test_ddp_two_workers_equal_one_worker_with_twice_the_batch(ray_cluster, tiny_model_dir, tmp_path):
    # Plain SGD without clipping: an update is lr x the gradient, so a gradient the all-reduce scaled
    # wrongly (by the world size, say) shows in the weights. AdamW's first steps are nearly sign-only and
    # clipping rescales the gradient, so either would hide it.
    common = ["optimizer=sgd", "lr=0.5", "warmup_steps=0", "grad_clip=0", "max_steps=3", "eval_every=3"]
    run(tmp_path, tiny_model_dir, "run_name=two", "num_workers=2", "batch_size=2", *common)
    run(tmp_path, tiny_model_dir, "run_name=one", "num_workers=1", "batch_size=4", *common)
    two_workers, _ = metrics(tmp_path, "two")
    one_worker, _ = metrics(tmp_path, "one")
    assert [row["step"] for row in steps_logged(tmp_path, "two")] == [1, 2, 3]
    for step in (1, 2, 3):
        assert one_worker[step]["loss"] == pytest.approx(two_workers[step]["loss"], abs=1e-5)
    a = load_file(tmp_path / "two" / "step-000003" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "one" / "step-000003" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    moved = max(t.abs().max().item() for k, t in a.items() if "lora_B" in k)
    assert moved > 1e-3, "lora_B starts at zero; the SGD steps must move it well past the tolerance below"
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)


def test_full_mode_trains_the_decoder_and_keeps_the_vision_tower(ray_cluster, tiny_model_dir, tmp_path):
    summary = run(tmp_path, tiny_model_dir, "run_name=full", "mode=full", "num_workers=1", "max_steps=2",
                  "eval_every=2", "lr=1e-3")
    base, _, _ = load_model_and_processor(str(tiny_model_dir))
    model = load_checkpoint(summary["latest_checkpoint"]).model
    for name, tensor in vision_tensors(base).items():
        assert torch.equal(dict(model.named_parameters())[name], tensor), f"vision tensor {name} changed"
    base_decoder = dict(base.model.language_model.named_parameters())
    changed = [n for n, p in model.model.language_model.named_parameters() if not torch.equal(p, base_decoder[n])]
    assert len(changed) > len(base_decoder) // 2
    saved = load_file(Path(summary["latest_checkpoint"]) / "decoder.safetensors")
    assert not any("vision_tower" in k for k in saved), "the checkpoint holds no vision weights"
    # By default full mode freezes the router gates (no load-balancing loss) and the projector, as the peers do.
    trained = dict(model.named_parameters())
    frozen = {n: p for n, p in base.named_parameters() if ".mlp.gate." in n or "multi_modal_projector" in n}
    assert any(".mlp.gate." in n for n in frozen) and any("multi_modal_projector" in n for n in frozen)
    for name, tensor in frozen.items():
        assert torch.equal(trained[name], tensor), f"{name} changed"
        assert name not in saved
    assert any(".mlp.experts." in n for n in changed), "the routed experts train"


def test_lora_all_trains_the_routed_experts(ray_cluster, tiny_model_dir, tmp_path):
    summary = run(tmp_path, tiny_model_dir, "run_name=all", "lora_targets=all", "lora_dropout=0", "num_workers=1",
                  "max_steps=3", "eval_every=3", "lr=1e-2")
    adapter = load_file(Path(summary["latest_checkpoint"]) / "adapter" / "adapter_model.safetensors")
    experts = {k: v for k, v in adapter.items() if ".mlp.experts." in k}
    # gate_up and down each: lora_A [4 experts x r, in] and lora_B [out, 4 experts x r]
    assert len(experts) == 4, sorted(experts)
    rank = 8  # cpu_smoke's lora_rank
    lora_b = [tensor for name, tensor in experts.items() if "lora_B" in name]
    assert len(lora_b) == 2
    for tensor in lora_b:
        # PEFT starts lora_B at zero, so a block that moved belongs to an expert that trained. An expert
        # the (frozen, random) router never picks gets no gradient, so this asks for several, not all.
        per_expert = tensor.float().reshape(tensor.shape[0], rank, 4).abs().sum(dim=(0, 1))
        assert (per_expert > 0).sum() >= 2, per_expert
    model = load_checkpoint(summary["latest_checkpoint"]).model
    assert any(".mlp.experts." in n and "lora_B" in n for n, _ in model.named_parameters()), "reloads with experts"


@pytest.mark.slow  # bitsandbytes' CPU kernels make this the slowest mode per step
def test_qlora_run_quantizes_the_decoder(ray_cluster, tiny_model_dir, tmp_path):
    import bitsandbytes as bnb

    summary = run(tmp_path, tiny_model_dir, "run_name=qlora", "mode=qlora", "num_workers=1", "max_steps=2",
                  "eval_every=2")
    assert (Path(summary["latest_checkpoint"]) / "adapter" / "adapter_model.safetensors").exists()
    from deepsynth.training.modes import load_for_training

    model, _, _ = load_for_training(str(tiny_model_dir), "qlora", dtype="float32", device="cpu")
    decoder_linear = [m for n, m in model.model.language_model.named_modules() if n.endswith(("q_proj", "down_proj"))]
    assert decoder_linear and all(isinstance(m, bnb.nn.Linear4bit) for m in decoder_linear)
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in model.model.vision_tower.modules())


RESUME_STEPS = 16


@pytest.fixture(scope="module")
def straight(ray_cluster, tiny_model_dir, tmp_path_factory):
    """An uninterrupted run that the stop-and-resume tests must equal bit for bit; returns its folder and overrides."""
    out = tmp_path_factory.mktemp("resume")
    common = [f"storage_path={out}", f"model={tiny_model_dir}", "build_tiny_model=false", "num_workers=1",
              f"max_steps={RESUME_STEPS}", f"eval_every={RESUME_STEPS}", "lora_dropout=0.1"]
    train.main(["--config", SMOKE, "run_name=straight", *common])
    return out, common


@pytest.mark.slow  # about 2 minutes; the exact stop after step k below checks the same resume bitwise in the default suite
def test_stop_by_signal_then_resume_matches_an_uninterrupted_run(ray_cluster, straight):
    # Enough steps after the signal (sent at step 2) that the stop lands mid-run: a tiny-model step
    # takes ~0.05 s on a quiet machine, less than the signal's trip to the workers.
    tmp_path, common = straight
    steps = RESUME_STEPS
    command = [sys.executable, "-m", "ray_jobs.train", "--config", SMOKE, "run_name=stopped", *common]
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.gcs_address}
    log = tmp_path / "stopped" / "logs" / "metrics.jsonl"
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and not (log.exists() and '"step": 2,' in log.read_text()):
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=240)
    assert process.returncode == 0, output[-3000:]
    assert '"status": "stopped"' in output
    stopped_at = summary_of(output)["metrics"]["step"]
    assert 2 <= stopped_at < steps

    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert '"status": "finished"' in resumed.stdout

    assert_bitwise_resume(tmp_path, "straight", "stopped", steps)


def assert_bitwise_resume(tmp_path, straight_run: str, resumed_run: str, steps: int) -> None:
    """The resumed run logged every step exactly once, with the uninterrupted run's losses and final weights, bit for bit."""
    straight, resumed = steps_logged(tmp_path, straight_run), steps_logged(tmp_path, resumed_run)
    assert [row["step"] for row in resumed] == list(range(1, steps + 1)), "no step was lost or repeated"
    assert [row["loss"] for row in resumed] == [row["loss"] for row in straight]
    a = load_file(tmp_path / straight_run / f"step-{steps:06d}" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / resumed_run / f"step-{steps:06d}" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def request_stop_after(run_name: str, step: int) -> None:
    """What a pause at an exact step does: ask the run's StopSignal (once its driver made it) to stop after `step`."""
    import ray

    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            ray.get(ray.get_actor(stop_signal_name(run_name)).request.remote(after_step=step))
            return
        except ValueError:  # not created yet
            time.sleep(0.05)
    raise AssertionError(f"{run_name}'s StopSignal never appeared")


def test_a_stop_after_step_k_then_resume_is_bitwise_the_uninterrupted_run(ray_cluster, straight):
    tmp_path, common = straight
    steps, k = RESUME_STEPS, 7
    requester = threading.Thread(target=request_stop_after, args=("paused", k))
    requester.start()
    first = train.main(["--config", SMOKE, "run_name=paused", *common])
    requester.join()
    assert first["status"] == "stopped" and first["metrics"]["step"] == k
    assert [row["step"] for row in steps_logged(tmp_path, "paused")] == list(range(1, k + 1))
    assert train.main(["--config", SMOKE, "run_name=paused", *common])["status"] == "finished"
    assert_bitwise_resume(tmp_path, "straight", "paused", steps)


@pytest.mark.slow  # DeepSpeed's start-up on CPU makes each stage ~1.5 minutes: `make test-slow`
@pytest.mark.parametrize("stage,mode", [(2, "full"), (3, "lora")])
def test_deepspeed_zero_trains_checkpoints_and_resumes(ray_cluster, tiny_model_dir, tmp_path, stage, mode):
    args = [f"run_name=zero{stage}", "strategy=deepspeed", f"zero_stage={stage}", f"mode={mode}", "eval_every=2",
            "lr=1e-3"]
    first = run(tmp_path, tiny_model_dir, *args, "max_steps=2")
    assert first["latest_checkpoint"].endswith("step-000002")
    shards = {p.name for p in (Path(first["latest_checkpoint"]) / "deepspeed" / "state").iterdir()}
    assert any("rank_0" in s for s in shards) and any("rank_1" in s for s in shards), shards

    second = run(tmp_path, tiny_model_dir, *args, "max_steps=4")
    assert second["latest_checkpoint"].endswith("step-000004")
    steps, _ = metrics(tmp_path, f"zero{stage}")
    assert sorted(steps) == [1, 2, 3, 4], "resumed at step 3, nothing repeated"
    assert all(math.isfinite(row["loss"]) for row in steps.values())
    # The gathered weights load back as a whole model (under ZeRO-3 each rank held only a shard).
    model = load_checkpoint(second["latest_checkpoint"]).model
    with torch.no_grad():
        assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.slow  # a third full run with a restart; resume itself is covered by the SIGTERM test above
def test_a_killed_worker_is_replaced_and_the_run_finishes_from_its_checkpoint(ray_cluster, tiny_model_dir, tmp_path):
    import psutil

    command = [sys.executable, "-m", "ray_jobs.train", "--config", SMOKE, "run_name=faulty", f"storage_path={tmp_path}",
               f"model={tiny_model_dir}", "build_tiny_model=false", "num_workers=1", "max_steps=6", "eval_every=2",
               "max_failures=1"]
    process = subprocess.Popen(command, env={**os.environ, "RAY_ADDRESS": ray_cluster.gcs_address}, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    log = tmp_path / "faulty" / "logs" / "metrics.jsonl"
    # Ray Train's controller writes this file once it has registered a checkpoint; kill after that.
    snapshot = tmp_path / "faulty" / "checkpoint_manager_snapshot.json"
    deadline = time.time() + 240
    while time.time() < deadline and not (snapshot.exists() and "step-000002" in snapshot.read_text()
                                          and '"step": 3,' in log.read_text()):
        time.sleep(0.2)
    # Ray names worker processes after their actor class ("ray::RayTrainWorker...").
    workers = [p for p in psutil.process_iter(["cmdline"]) if "ray::RayTrainWorker" in " ".join(p.info["cmdline"] or [])]
    assert len(workers) == 1, workers
    workers[0].kill()

    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output[-3000:]
    summary = summary_of(output)
    assert summary["status"] == "finished" and summary["latest_checkpoint"].endswith("step-000006")
    logged = [json.loads(line).get("step") for line in log.read_text().splitlines() if '"loss"' in line]
    assert logged.count(1) == 1 and logged.count(2) == 1, "the restart resumed after the step-2 checkpoint"
    assert logged.count(3) == 2, "step 3 ran once before the kill and once after the restart"
