"""What operators see of the summarizer: its JSON log records and its Prometheus metrics.

One small deployment with `log_format=json` and one LoRA adapter serves the module on the shared
Ray cluster; the tests read the replicas' log files in the session's logs/ folder and scrape the node's
metrics endpoint (Ray's metrics agent), as Prometheus would.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import requests
import torch
from metrics_endpoint import dashboard_metric_names, scrape_cluster

from deepsynth.data.corpus import generate_corpus
from deepsynth.model.loading import load_model_and_processor
from deepsynth.training.checkpoint import save_checkpoint, trained_state_dict
from deepsynth.training.config import TrainConfig
from deepsynth.training.modes import prepare_trainable

APP = "observed"
TEXT = generate_corpus("test", 1, seed=5)[0]["text"][:1500]
SUMMARIZER_METRICS = ["deepsynth_summarizer_requests", "deepsynth_summarizer_latency_s",
                      "deepsynth_summarizer_documents", "deepsynth_summarizer_generate_calls",
                      "deepsynth_summarizer_batch_size", "deepsynth_summarizer_queue_wait_s",
                      "deepsynth_summarizer_generate_s"]
def replica_records(logs_dir: Path, deployment: str, replica: str) -> list[dict]:
    """Every line of a replica's log file, parsed as JSON (fails on any line that is not)."""
    text = (logs_dir / "serve" / f"replica_{APP}_{deployment}_{replica}.log").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def adapter(tiny_model_dir, tmp_path_factory):
    """A LoRA checkpoint of the tiny model, as ray_jobs.train writes it (untrained adapters suffice here)."""
    torch.manual_seed(0)
    model, processor, family = load_model_and_processor(str(tiny_model_dir))
    model, _ = prepare_trainable(model, family, "lora", rank=4, alpha=8, dropout=0.0)
    config = TrainConfig(model=str(tiny_model_dir), mode="lora", run_name="observed", lora_rank=4, lora_alpha=8)
    return save_checkpoint(
        tmp_path_factory.mktemp("observed-adapter"), 3, model=model, processor=processor, config=config, family_name=family.name,
        metrics={"val_loss": 1.0}, weights=trained_state_dict(model))


@pytest.fixture(scope="module")
def served(serve_url, tiny_model_dir, adapter):
    """The app, after one request on the base model, one on the adapter and one refused (404)."""
    from ray import serve

    from serve.summarizer import build_app

    args = {"model": str(tiny_model_dir), "adapters": {"legal": str(adapter)}, "device": "cpu",
            "default_max_new_tokens": 4, "max_batch_size": 4, "max_ongoing_requests": 8, "num_cpus": 0.5,
            "ingress_num_cpus": 0.25, "log_format": "json"}
    serve.run(build_app(args), name=APP, route_prefix=f"/{APP}")
    url = f"{serve_url}/{APP}/v1/summarize"
    responses = {
        "base": requests.post(url, json={"text": TEXT}, timeout=120),
        "legal": requests.post(url, json={"text": TEXT, "adapter": "legal"}, timeout=120),
        "missing": requests.post(url, json={"text": TEXT, "adapter": "nope"}, timeout=120),
    }
    assert [r.status_code for r in responses.values()] == [200, 200, 404], [r.text for r in responses.values()]
    yield responses
    serve.delete(APP)


def test_replica_logs_are_json_records_with_request_id_and_adapter(served, serve_url, ray_cluster):
    replicas = requests.get(f"{serve_url}/{APP}/v1/stats", timeout=30).json()  # names the replicas' log files
    records = replica_records(ray_cluster.logs_dir, "SummarizerIngress", replicas["ingress"]["replica"])
    for record in records:
        assert {"asctime", "levelname", "message", "deployment", "replica"} <= record.keys(), record
    by_request = {r.get("request_id"): r for r in records if r["message"].startswith("summarize ")}
    for case, adapter in (("base", ""), ("legal", "legal"), ("missing", "")):
        request_id = served[case].headers["x-request-id"]
        record = by_request[request_id]
        assert record["adapter"] == adapter and record["status"] == served[case].status_code, record
        assert record["application"] == APP and record["route"] == f"/{APP}/v1/summarize"

    model_records = replica_records(ray_cluster.logs_dir, "SummarizerModel", replicas["model"]["replica"])
    batches = [r for r in model_records if r["message"].startswith("generated ")]
    assert {r["adapter"] for r in batches} == {"", "legal"}, batches


def test_prometheus_endpoint_has_the_summarizer_metrics_per_adapter(served):
    # Ray's metrics agent exports on its own schedule (seconds); wait for it within a deadline.
    deadline, seen = time.time() + 90, {}
    while time.time() < deadline:
        samples = [s for s in scrape_cluster() if "deepsynth_summarizer" in s[0]]
        seen = {(name, labels.get("adapter"), labels.get("status")): value for name, labels, value in samples}
        nonzero = {name for (name, _, _), value in seen.items() if value > 0}
        labelled = {(adapter, status) for (name, adapter, status), value in seen.items()
                    if name.startswith("ray_deepsynth_summarizer_requests") and value > 0}
        # Each series is exported on its own schedule: wait for all of them, every adapter's included.
        if all(any(n.startswith("ray_" + metric) for n in nonzero) for metric in SUMMARIZER_METRICS) and \
                {("", "200"), ("legal", "200"), ("", "404")} <= labelled:
            break
        time.sleep(2)
    names = {name for name, _, _ in seen}
    for metric in SUMMARIZER_METRICS:
        assert any(name.startswith("ray_" + metric) and value > 0 for (name, _, _), value in seen.items()), \
            (metric, sorted(names))
    requests_total = {(a, s): v for (n, a, s), v in seen.items() if n.startswith("ray_deepsynth_summarizer_requests")}
    assert requests_total[("", "200")] >= 1 and requests_total[("legal", "200")] >= 1
    assert requests_total[("", "404")] >= 1
    assert not any(adapter == "nope" for _, adapter, _ in seen), "a client's unknown adapter never becomes a label"
    documents = {a: v for (n, a, _), v in seen.items() if n.startswith("ray_deepsynth_summarizer_documents")}
    assert documents["legal"] >= 1 and documents[""] >= 1
    dashboard = {name for name in dashboard_metric_names() if name.startswith("ray_deepsynth_summarizer")}
    assert dashboard and dashboard <= names, f"the dashboard queries names Ray does not export: {dashboard - names}"
