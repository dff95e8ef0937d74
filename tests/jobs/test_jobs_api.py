"""The job API end to end: Ray Serve on the session cluster (dashboard and Ray token auth on), real Ray Jobs
running the tiny CPU training config, a real SQLite file, HTTP over loopback.

One module-scoped deployment serves every test; real job runs are few (one train job that is paused and
resumed, one that fails fast) because each Ray job start costs seconds of imports.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import requests
from polling import wait_for
from ray import serve
from ray.job_submission import JobSubmissionClient

from ray_jobs import prepare_dataset
from serve.jobs import JobsAPI, build_app

APP = "deepsynth-jobs"
CANARY = "hf_canary" + secrets.token_hex(12)
API_TOKEN = "api-" + secrets.token_hex(16)
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
DATASET = "builtin-50"


class Recorder:
    """Every response body the API returned in this module, to search for leaks."""

    def __init__(self, base: str):
        self.base, self.bodies = base, []

    def __call__(self, method: str, path: str, headers: dict | None = AUTH, **kwargs) -> requests.Response:
        response = requests.request(method, self.base + path, headers=headers, timeout=60, **kwargs)
        self.bodies.append(response.text + json.dumps(dict(response.headers)))
        return response


@pytest.fixture(scope="module")
def api(ray_cluster, serve_url, tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("jobs-api")
    token_file = root / "api-token"
    token_file.write_text(API_TOKEN)
    # A failed earlier run's shard (no manifest was written): the new run must not list it.
    leftover = root / "storage" / "datasets" / DATASET / "train"
    leftover.mkdir(parents=True)
    pq.write_table(pa.table({c: [1, 2, 3] for c in prepare_dataset.STAT_COLUMNS}), leftover / "leftover.parquet")
    prepare_dataset.main(["--name", DATASET, "--limit", "25", "--model", str(tiny_model_dir),
                          "--output", str(root / "storage"), "--rows-per-shard", "16"])
    args = {"state_dir": str(root / "state"), "storage": str(root / "storage"), "api_token_file": str(token_file),
            "ray_dashboard_url": ray_cluster.dashboard_url, "model_roots": [str(Path(tiny_model_dir).parent)],
            "max_workers": 2, "rate_per_minute": 2, "rate_burst": 10, "failed_logins_per_minute": 1000}
    build_app(args)  # the builder checks its args
    # The replica's environment stands in for a node's: it holds HF_TOKEN, which must never reach a job's
    # runtime_env, metadata or any response. (In production it comes from the node, not from Serve's config.)
    deployment = JobsAPI.options(ray_actor_options={"num_cpus": 0, "runtime_env": {"env_vars": {"HF_TOKEN": CANARY}}})
    serve.run(deployment.bind(args), name=APP, route_prefix="/api")
    yield {"call": Recorder(serve_url + "/api"), "root": root, "args": args, "deployment": deployment}
    serve.delete(APP)


@pytest.fixture(scope="module")
def failing_job(api):
    """A train job that fails fast (its LoRA targets match nothing); submitted early so it runs alongside."""
    body = {"type": "train", "preset": "cpu_smoke", "overrides": {"lora_targets": ["no_such_module"], "num_workers": 1}}
    # Right after the cluster starts, Ray Jobs may have no agent yet; the API says so with a 503 and Retry-After.
    response = wait_for(lambda: api["call"]("POST", "/jobs", json=body), lambda r: r.status_code != 503, 60,
                        "Ray Jobs to accept a job")
    assert response.status_code == 201, response.text
    return response.json()["id"]


def test_auth_guards_every_route_but_healthz(api):
    call = api["call"]
    assert call("GET", "/healthz", headers={}).json() == {"status": "ok"}
    schema = call("GET", "/openapi.json").json()
    routes = [(method.upper(), path.replace("{job_id}", "job-x")) for path, ops in schema["paths"].items()
              for method in ops if path != "/healthz"]
    assert len(routes) >= 10, routes
    routes += [("GET", "/docs"), ("GET", "/openapi.json")]
    for method, path in routes:
        for headers, params in (({}, {}), ({"Authorization": "Bearer wrong-" + API_TOKEN}, {}),
                                ({"Authorization": API_TOKEN}, {}), ({}, {"token": API_TOKEN}),
                                ({}, {"x": API_TOKEN}), (AUTH, {"access_token": API_TOKEN})):
            response = call(method, path, headers=headers, params=params,
                            json={"type": "train", "preset": "cpu_smoke", "runtime_env": {}})
            assert response.status_code == 401, (method, path, headers, params, response.text)
            assert response.json()["error"]["type"] == "unauthorized"
            assert response.headers["WWW-Authenticate"] == "Bearer"

    for extra in ({"entrypoint": "python -c 'import os; os.system(\"id\")'"},
                  {"runtime_env": {"env_vars": {"HF_TOKEN": CANARY}}}, {"resources": {"GPU": 8}}):
        response = call("POST", "/jobs", json={"type": "train", "preset": "cpu_smoke", **extra})
        assert response.status_code == 422, response.text
        assert next(iter(extra)) in response.json()["error"]["message"] and CANARY not in response.text


def test_presets_and_listings(api):
    call = api["call"]
    presets = {p["name"]: p for p in call("GET", "/training/presets").json()}
    assert presets["cpu_smoke"]["type"] == "train" and presets["cpu_smoke"]["config"]["mode"] == "lora"
    assert presets["sweep_cpu"]["type"] == "tune" and presets["sweep_cpu"]["sizes"] is None
    # The GPU recipes' published DeepSeek-OCR-2, sized on the meta device: routed-expert LoRA adds one rank-16
    # pair per expert for gate_up [2 x 896, 1280] and down [1280, 896] in each of its 11 MoE layers.
    sizes = presets["lora_ocr2"]["sizes"]
    assert set(sizes) == {"full", "lora default", "lora all", "qlora"}
    assert sizes["lora all"]["trainable_parameters"] - sizes["lora default"]["trainable_parameters"] == (
        11 * 64 * 16 * ((1280 + 2 * 896) + (896 + 1280)))
    assert sizes["qlora"]["weight_bytes"] < 0.45 * sizes["lora default"]["weight_bytes"]
    assert {b["name"] for b in call("GET", "/datasets/benchmarks").json()} >= {"builtin", "cnn_dailymail", "xsum"}
    [generated] = call("GET", "/datasets/generated").json()
    assert generated["name"] == DATASET and generated["splits"] == {"train": 25, "validation": 25}
    assert generated["summary"]["documents"] == 50 and generated["summary"]["visual_tokens"] > 0
    manifest = json.loads((Path(generated["path"]) / "manifest.json").read_text())
    assert [d["num_pages"] >= 1 and d["ratio"] > 0 for d in manifest["splits"]["train"]["per_document"]] == [True] * 25
    assert sorted(Path(generated["path"], "train").glob("*.parquet"))


def test_unknown_jobs_and_bad_requests(api):
    call = api["call"]
    for method, path in (("GET", "/jobs/job-nope"), ("DELETE", "/jobs/job-nope"), ("POST", "/jobs/job-nope/pause"),
                         ("POST", "/jobs/job-nope/resume"), ("GET", "/jobs/job-nope/logs")):
        response = call(method, path)
        assert response.status_code == 404 and response.json()["error"]["type"] == "not_found", (method, path)
    response = call("POST", "/jobs", json={"type": "train", "preset": "cpu_smoke", "overrides": {"storage_path": "/"}})
    assert response.status_code == 422 and "storage_path" in response.json()["error"]["message"]
    response = call("POST", "/jobs", json={"type": "train", "preset": "cpu_smoke", "overrides": {"prompt": CANARY}})
    assert response.status_code == 422 and "secret" in response.text and CANARY not in response.text


def test_lifecycle_pause_resume_continues_from_the_checkpoint(api, failing_job, tiny_model_dir):
    call = api["call"]
    overrides = {"model": str(tiny_model_dir), "dataset": f"prepared:{DATASET}", "num_workers": 1, "max_steps": 8,
                 "eval_every": 4, "log_every": 1, "batch_size": 2, "train_limit": 16, "val_limit": 2}
    body = {"type": "train", "preset": "cpu_smoke", "overrides": overrides}
    created = call("POST", "/jobs", json=body, headers={**AUTH, "Idempotency-Key": "lifecycle-1"})
    assert created.status_code == 201, created.text
    job = created.json()
    again = call("POST", "/jobs", json=body, headers={**AUTH, "Idempotency-Key": "lifecycle-1"})
    assert again.status_code == 200 and again.json()["id"] == job["id"], "same key, same job"
    other = call("POST", "/jobs", json={**body, "preset": "full_ocr2"}, headers={**AUTH, "Idempotency-Key": "lifecycle-1"})
    assert other.status_code == 409, "a key reused for another request"
    assert sum(j["id"] == job["id"] for j in call("GET", "/jobs").json()) == 1
    job_id = job["id"]

    def get():
        return call("GET", f"/jobs/{job_id}").json()

    def logs():
        return call("GET", f"/jobs/{job_id}/logs", params={"tail": 60}).text

    running = wait_for(get, lambda j: j["status"] == "running" and j["progress"]["step"] >= 1, 240, "progress", logs)
    assert running["progress"]["total"] == 8 and running["latest_metrics"]["loss"] > 0
    assert call("POST", f"/jobs/{job_id}/resume").status_code == 409, "resume a running job"
    purge = call("DELETE", f"/jobs/{job_id}", params={"purge": "true"})
    assert purge.status_code == 409 and "then purge" in purge.json()["error"]["message"], "purge a running job"

    paused = call("POST", f"/jobs/{job_id}/pause")
    assert paused.status_code == 202 and paused.json()["status"] in ("pausing", "paused"), paused.text
    paused = wait_for(get, lambda j: j["status"] != "pausing", 180, "paused")
    assert paused["status"] == "paused", paused
    stopped_at = paused["checkpoints"][-1]["step"]
    assert paused["resume_step"] == stopped_at, paused
    assert 1 <= stopped_at < 8, paused
    checkpoint = Path(paused["checkpoints"][-1]["path"])
    assert (checkpoint / "meta.json").exists() and (checkpoint / "adapter" / "adapter_model.safetensors").exists()
    assert call("POST", f"/jobs/{job_id}/pause").status_code == 409, "pause a paused job"

    resumed = call("POST", f"/jobs/{job_id}/resume")
    assert resumed.status_code == 202 and resumed.json()["status"] in ("queued", "running"), resumed.text
    done = wait_for(get, lambda j: j["status"] in ("succeeded", "failed"), 300, "the resumed run to finish")
    assert done["status"] == "succeeded", call("GET", f"/jobs/{job_id}/logs").text[-3000:]
    assert done["attempts"] == 2 and done["progress"] == {"step": 8, "total": 8, "fraction": 1.0}

    lines = [json.loads(x) for x in (checkpoint.parent / "logs" / "metrics.jsonl").read_text().splitlines()]
    steps = [x["step"] for x in lines if "loss" in x]
    assert steps == list(range(1, 9)), f"the resumed attempt continued after step {stopped_at}, repeating nothing"
    logs = call("GET", f"/jobs/{job_id}/logs").text
    assert "=== attempt 2" in logs and f"step {stopped_at + 1}/8" in logs.split("=== attempt 2")[1]
    assert "step 1/8" not in logs.split("=== attempt 2")[1], "the second attempt did not start from step 0"

    # Ray Train keeps the best checkpoints by val loss and the latest, so the pause's own may be pruned by now.
    assert done["checkpoints"] and done["checkpoints"][-1]["step"] == 8
    runs = {r["run"]: r for r in call("GET", "/training/checkpoints").json()}
    assert [c["step"] for c in runs[job_id]["checkpoints"]] == [c["step"] for c in done["checkpoints"]]

    finished = call("POST", f"/jobs/{job_id}/pause")
    assert finished.status_code == 409 and finished.json()["error"]["type"] == "invalid_transition"
    assert call("POST", f"/jobs/{job_id}/resume").status_code == 409


def test_no_secret_reaches_responses_logs_records_or_ray(api, failing_job, ray_cluster):
    call = api["call"]
    failed = wait_for(lambda: call("GET", f"/jobs/{failing_job}").json(), lambda j: j["status"] == "failed", 180,
                      "the failing job")
    assert "no_such_module" in call("GET", f"/jobs/{failing_job}/logs").text, "the logs are the job's real output"
    call("GET", "/jobs")
    call("GET", f"/jobs/{failing_job}/logs?tail=50")
    assert failed["error"]

    everything = "\n".join(call.bodies)
    assert CANARY not in everything and ray_cluster.token not in everything and API_TOKEN not in everything
    state = api["root"] / "state"
    for db_file in state.glob("jobs.sqlite3*"):
        assert CANARY.encode() not in db_file.read_bytes(), db_file
    client = JobSubmissionClient(ray_cluster.dashboard_url, headers={"Authorization": f"Bearer {ray_cluster.token}"})
    ours = [info for info in client.list_jobs() if (info.metadata or {}).get("deepsynth_job_id")]
    assert {info.metadata["deepsynth_job_id"] for info in ours} >= {failing_job}
    for info in ours:
        shown = json.dumps({"metadata": info.metadata, "runtime_env": info.runtime_env, "entrypoint": info.entrypoint})
        assert CANARY not in shown and ray_cluster.token not in shown and API_TOKEN not in shown
        assert not (info.runtime_env or {}).get("env_vars"), info.runtime_env


def test_restarting_the_app_keeps_records_and_states(api):
    call = api["call"]
    before = {j["id"]: j["status"] for j in call("GET", "/jobs").json()}
    assert before and set(before.values()) <= {"succeeded", "failed"}, before
    serve.delete(APP)
    assert requests.get(call.base + "/healthz", timeout=10).status_code == 404, "the app is gone"
    serve.run(api["deployment"].bind(api["args"]), name=APP, route_prefix="/api")
    after = {j["id"]: j["status"] for j in call("GET", "/jobs").json()}
    assert after == before


def test_delete_and_rate_limit(api):
    call = api["call"]
    jobs = call("GET", "/jobs").json()
    failed = next(j for j in jobs if j["status"] == "failed")
    run_dir = api["root"] / "storage" / "runs" / failed["id"]
    run_dir.mkdir(parents=True, exist_ok=True)
    deleted = call("DELETE", f"/jobs/{failed['id']}", params={"purge": "true"})
    assert deleted.status_code == 200 and deleted.json()["purged"] == [str(run_dir)] and not run_dir.exists()
    assert call("GET", f"/jobs/{failed['id']}").status_code == 404
    assert call("DELETE", f"/jobs/{failed['id']}").status_code == 404

    # Every creation attempt counts, valid or not, so probing costs the same as creating.
    statuses = []
    for _ in range(15):
        response = call("POST", "/jobs", json={"type": "train", "preset": "cpu_smoke", "overrides": {"lr": -1}})
        statuses.append(response.status_code)
        if response.status_code == 429:
            break
    assert statuses[-1] == 429 and set(statuses[:-1]) == {422}, statuses
    assert int(response.headers["Retry-After"]) >= 1 and response.json()["error"]["type"] == "rate_limited"
