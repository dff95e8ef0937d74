"""Shared fixtures: the tiny DeepSeek-OCR-2 is built once per session and loaded fresh per test."""

from __future__ import annotations

import pytest
import torch

from deepsynth.data.corpus import generate_corpus
from deepsynth.data.render import LAYOUTS, render_pages
from deepsynth.model.loading import load_model_and_processor
from deepsynth.model.tiny import build_tiny_model


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


@pytest.fixture(scope="session")
def ray_cluster():
    """A real local Ray cluster shared by the integration tests; subprocesses join it via RAY_ADDRESS.

    More logical CPUs than cores: training workers hold one each, and Ray Data needs room to render.
    """
    import ray

    context = ray.init(num_cpus=6, include_dashboard=False)
    yield context.address_info["gcs_address"]
    ray.shutdown()
