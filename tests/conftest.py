"""Shared fixtures: the tiny DeepSeek-OCR-2 is built once per session and loaded fresh per test."""

from __future__ import annotations

import os
import secrets

# Ray reads its auth mode and token once per process, so they are set before anything imports ray.
# setdefault: a test that imports this module again gets the same token, not a new one.
RAY_TEST_TOKEN = os.environ.setdefault("DEEPSYNTH_TEST_RAY_TOKEN", "deepsynth-test-" + secrets.token_hex(16))
os.environ["RAY_AUTH_MODE"] = "token"
os.environ["RAY_AUTH_TOKEN"] = RAY_TEST_TOKEN
# Ray Jobs' stop sends SIGTERM, then SIGKILL after this wait; a paused training job needs the time
# to finish its step and write a checkpoint.
os.environ["RAY_JOB_STOP_WAIT_TIME_S"] = "120"

import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from deepsynth.data.corpus import generate_corpus
from deepsynth.data.render import LAYOUTS, render_pages
from deepsynth.model.loading import load_model_and_processor
from deepsynth.model.tiny import build_tiny_model, build_tiny_v1_model


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_v1_dir(tmp_path_factory):
    """The tiny DeepSeek-OCR v1, stored in bf16 in the published weight layout."""
    return build_tiny_v1_model(tmp_path_factory.mktemp("tiny-v1"))


@pytest.fixture
def tiny(tiny_model_dir):
    """A freshly loaded (model, processor, family); tests may train or freeze it."""
    torch.manual_seed(0)
    return load_model_and_processor(str(tiny_model_dir))


@pytest.fixture(scope="session")
def corpus_examples():
    """Four built-in training documents rendered to one-page examples."""
    docs = generate_corpus("train", 4)
    return [{"pages": render_pages(d["text"], LAYOUTS["ocr2-page"]), "summary": d["summary"], **d} for d in docs]


@pytest.fixture
def lora_checkpoint(tiny, tiny_model_dir, tmp_path):
    """A LoRA checkpoint folder as ray_jobs.train writes it, with perturbed adapters and an eval report."""
    import json

    from deepsynth.training.checkpoint import save_checkpoint, trained_state_dict
    from deepsynth.training.config import TrainConfig
    from deepsynth.training.modes import prepare_trainable

    model, processor, family = tiny
    model, _ = prepare_trainable(model, family, "lora", rank=4, alpha=8, dropout=0.0)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)  # as if trained
    config = TrainConfig(model=str(tiny_model_dir), mode="lora", run_name="card-test", lora_rank=4, lora_alpha=8)
    path = save_checkpoint(
        tmp_path / "run", 9, model=model, processor=processor, config=config, family_name=family.name,
        metrics={"val_loss": 1.0}, weights=trained_state_dict(model))
    report = {"dataset": "builtin", "split": "test", "documents": 20, "repetition_rate": 0.05,
              "rouge": {"rouge1": 0.61, "rouge2": 0.42, "rougeL": 0.6}}
    (path / "eval-builtin-test.json").write_text(json.dumps(report))
    return path


@pytest.fixture(scope="session")
def a4_checkpoint(ray_cluster, tiny_model_dir, tmp_path_factory):
    """A checkpoint trained on A4 pages with a custom prompt: evaluation and serving must reuse both unasked."""
    from pathlib import Path

    from ray_jobs import train

    out = tmp_path_factory.mktemp("a4")
    summary = train.main([
        "--config", "ray_jobs/configs/cpu_smoke.yaml", f"storage_path={out}", f"model={tiny_model_dir}",
        "build_tiny_model=false", "run_name=a4", "layout=ocr2-a4", "max_pages=2", "max_length=4096",
        "prompt=Write the headline.", "num_workers=1", "batch_size=1", "train_limit=2", "val_limit=1", "max_steps=1",
        "eval_every=1"])
    return Path(summary["latest_checkpoint"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class RayCluster:
    gcs_address: str
    dashboard_url: str  # http://127.0.0.1:PORT, the Ray Jobs REST API and `serve deploy` target
    token: str  # Ray's own auth token (RAY_AUTH_MODE=token), not the DeepSynth API token
    logs_dir: Path  # the session's logs/ folder, where the drivers', workers' and replicas' log files are


@pytest.fixture(scope="session")
def ray_cluster():
    """A real local Ray cluster shared by the integration tests, with the dashboard and Ray token auth on.

    More logical CPUs than cores: training workers hold one each, and Ray Data needs room to render.
    Subprocesses join it via RAY_ADDRESS and the token in the environment.
    """
    import ray

    # address="local": always a fresh cluster, never one left running on this machine (e.g. by the demo).
    # Its own temp dir: Ray Jobs point each job's driver at the cluster named in <temp dir>/ray_current_cluster,
    # which another cluster started later on the same machine would otherwise overwrite.
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    # The proxy middlewares a deployed cluster runs (docs/serving.md, Security); Serve's proxy reads this
    # from the environment the cluster's processes inherit from here.
    os.environ["RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"] = "serve.proxy:middlewares"
    context = ray.init(address="local", num_cpus=6, include_dashboard=True, dashboard_host="127.0.0.1",
                       dashboard_port=free_port(), _temp_dir=temp_dir)
    # ray.init does not write that file (`ray start` does); without it a job's driver joins whichever Ray
    # cluster it finds running on the machine first.
    (Path(temp_dir) / "ray_current_cluster").write_text(context.address_info["gcs_address"])
    yield RayCluster(gcs_address=context.address_info["gcs_address"], dashboard_url=f"http://{context.dashboard_url}",
                     token=RAY_TEST_TOKEN, logs_dir=Path(temp_dir) / "session_latest" / "logs")
    ray.shutdown()


@pytest.fixture(scope="session")
def serve_url(ray_cluster):
    """Ray Serve on the shared cluster, on a free loopback port; tests add applications with `serve.run`."""
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
