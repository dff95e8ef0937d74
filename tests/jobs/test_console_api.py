"""The job API's routes for the web console, over real HTTP on the shared Ray cluster: `POST /jobs:validate`
(with the 422's `field`), `GET /jobs/{id}/metrics` and `/trials`, and `POST /datasets` (upload, prepare, train).

One module-scoped deployment serves every test. Most cases write run files or job records straight into the
app's storage and SQLite file, so they cost no Ray job; the upload test runs the real prepare_dataset and train
jobs on Ray Jobs.
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path

import pytest
import requests
from ray import serve

from deepsynth.jobs.store import JobStore, new_job_id
from serve.jobs import JobsAPI, build_app

APP = "deepsynth-console-api"
ROUTE = "/console-api"
API_TOKEN = "api-" + secrets.token_hex(16)
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
CANARY = "hf_canary" + secrets.token_hex(12)


@pytest.fixture(scope="module")
def api(ray_cluster, serve_url, tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("console-api")
    (root / "api-token").write_text(API_TOKEN)
    args = {"state_dir": str(root / "state"), "storage": str(root / "storage"),
            "api_token_file": str(root / "api-token"), "ray_dashboard_url": ray_cluster.dashboard_url,
            "model_roots": [str(Path(tiny_model_dir).parent)], "max_workers": 2, "rate_per_minute": 1000,
            "rate_burst": 1000, "failed_logins_per_minute": 1000}
    build_app(args)
    deployment = JobsAPI.options(ray_actor_options={"num_cpus": 0, "runtime_env": {"env_vars": {"HF_TOKEN": CANARY}}})
    serve.run(deployment.bind(args), name=APP, route_prefix=ROUTE)
    yield {"base": serve_url + ROUTE, "root": root, "storage": root / "storage", "ray": ray_cluster}
    serve.delete(APP)


def call(api, method: str, path: str, headers: dict | None = AUTH, **kwargs) -> requests.Response:
    response = requests.request(method, api["base"] + path, headers=headers, timeout=60, **kwargs)
    assert response.headers["content-type"].startswith("application/json"), response.text
    assert CANARY not in response.text and API_TOKEN not in response.text
    return response


def wait_for(fetch, done, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = fetch()
        if done(value):
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}; last: {getattr(value, 'text', value)}")


def record(api, job_type: str = "train", status: str = "succeeded", preset: str = "cpu_smoke",
           overrides: dict | None = None, run_name: str | None = None) -> str:
    """A job record written into the app's own database, as if the app had created (and Ray run) it."""
    store = JobStore(api["root"] / "state" / "jobs.sqlite3", clock=time.time)
    job_id = new_job_id()
    run_name = run_name or job_id
    job, _ = store.create(job_type=job_type, preset=preset, overrides=overrides or {}, run_name=run_name,
                          run_dir=str(api["storage"] / "runs" / run_name), total_steps=8, idempotency_key=None,
                          job_id=job_id)
    if status != "queued":
        store.transition(job.id, status, expected="queued")
    store.close()
    return job.id


def test_new_routes_need_the_token(api):
    job = record(api)
    for method, path in (("POST", "/jobs:validate"), ("GET", f"/jobs/{job}/metrics"), ("GET", f"/jobs/{job}/trials"),
                         ("POST", "/datasets"), ("GET", "/datasets/uploads")):
        for headers in ({}, {"Authorization": "Bearer wrong-" + API_TOKEN}, {"Authorization": API_TOKEN}):
            response = call(api, method, path, headers=headers, json={"type": "train", "preset": "cpu_smoke"})
            assert response.status_code == 401, (method, path, headers, response.text)
            assert response.json()["error"]["type"] == "unauthorized"


def test_validate_resolves_the_config_and_command_and_creates_nothing(api, tiny_model_dir):
    before = call(api, "GET", "/jobs").json()
    body = {"type": "train", "preset": "cpu_smoke", "overrides": {"max_steps": 3, "model": str(tiny_model_dir)}}
    response = call(api, "POST", "/jobs:validate", json=body)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["valid"] is True and (result["type"], result["preset"]) == ("train", "cpu_smoke")
    config = result["config"]
    # The preset's values, the client's overrides and the server's own settings, resolved as the job would run.
    assert config["max_steps"] == 3 and config["lora_rank"] == 8 and config["model"] == str(tiny_model_dir)
    assert config["build_tiny_model"] is False, "a named model is never built"
    assert config["run_name"] == "{job_id}" and config["storage_path"] == str(api["storage"] / "runs")
    assert result["total_steps"] == 3
    command = result["command"]
    assert "-m ray_jobs.train --config" in command and "max_steps=3" in command and "'run_name=\"{job_id}\"'" in command
    assert call(api, "GET", "/jobs").json() == before, "validation records nothing"

    # A created job runs that very command with its own id in place of {job_id}.
    # Right after the cluster starts, Ray Jobs may have no agent yet; the API says so with a 503 and Retry-After.
    created = wait_for(lambda: call(api, "POST", "/jobs", json=body), lambda r: r.status_code != 503, 60,
                       "Ray Jobs to accept a job")
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(api["ray"].dashboard_url, headers={"Authorization": f"Bearer {api['ray'].token}"})
    entrypoint = client.get_job_info(f"{job_id}-1").entrypoint
    assert entrypoint == command.replace("{job_id}", job_id)
    assert call(api, "DELETE", f"/jobs/{job_id}").json()["stopped"] is True

    sweep = call(api, "POST", "/jobs:validate", json={"type": "tune", "preset": "sweep_cpu",
                                                      "overrides": {"ranks": [2, 4]}}).json()
    assert [t["lora_rank"] for t in sweep["config"]["trials"]] == [2, 4]
    assert sweep["config"]["trials"][0]["run_name"] == "{job_id}-r2-a4-lr0.003-d0"


@pytest.mark.parametrize("body,field,says", [
    ({"type": "train", "preset": "cpu_smoke", "overrides": {"lr": -1}}, "overrides.lr", "lr must be positive"),
    ({"type": "train", "preset": "cpu_smoke", "overrides": {"lr": "1e-3"}}, "overrides.lr", "expects finite float"),
    ({"type": "train", "preset": "cpu_smoke", "overrides": {"train_limit": 1}}, "overrides.train_limit", "train_limit"),
    ({"type": "train", "preset": "cpu_smoke", "overrides": {"lrr": 1}}, "overrides.lrr", "Did you mean lr"),
    ({"type": "train", "preset": "cpu_smoke", "overrides": {"storage_path": "/"}}, "overrides.storage_path",
     "cannot be set"),
    ({"type": "train", "preset": "cpu_smoke", "overrides": {"dataset": "/etc/passwd"}}, "overrides.dataset",
     "prepared:<name>"),
    ({"type": "train", "preset": "cpu_smoke", "overrides": {"num_workers": 64}}, "overrides.num_workers",
     "above this server's limit"),
    ({"type": "train", "preset": "cpu_smoke", "overrides": {"prompt": CANARY}}, "overrides.prompt", "secret"),
    ({"type": "train", "preset": "no_such_preset"}, "preset", "is not a train preset"),
    ({"type": "trian", "preset": "cpu_smoke"}, "type", "Input should be"),
    ({"type": "train", "preset": "../x"}, "preset", "String should match pattern"),
    ({"type": "train", "preset": "cpu_smoke", "entrypoint": "id"}, "entrypoint", "Extra inputs"),
    ({"type": "tune", "preset": "sweep_cpu", "overrides": {"ranks": [0]}}, "overrides.ranks", "ranks must be"),
    ({"type": "tune", "preset": "sweep_cpu", "overrides": {"overrides": {"max_length": 10**12}}},
     "overrides.overrides.max_length", "max_length must be in"),
    ({"type": "evaluate", "preset": "builtin", "overrides": {"model": "a/b", "num_beams": 1000}}, "overrides.num_beams",
     "num_beams must be in"),
    ({"type": "prepare_dataset", "preset": "builtin", "overrides": {"limit": 0}}, "overrides.limit", "limit must be"),
])
def test_validate_answers_the_422_create_gives_with_the_failing_field(api, body, field, says):
    validated = call(api, "POST", "/jobs:validate", json=body)
    created = call(api, "POST", "/jobs", json=body)
    assert validated.status_code == created.status_code == 422, (validated.text, created.text)
    assert validated.json() == created.json(), "validate and create answer the same 422"
    error = validated.json()["error"]
    assert error["field"] == field and says in error["message"], error
    assert error["type"] in ("invalid_job", "invalid_request")


def test_validate_of_unparsable_json_has_no_field(api):
    response = call(api, "POST", "/jobs:validate", data=b"{not json", headers={**AUTH, "Content-Type": "application/json"})
    assert response.status_code == 422 and "field" not in response.json()["error"], response.text
