"""The job API against hostile and careless requests and bad state, over real HTTP on the shared Ray cluster.

Every case gets its JSON 4xx/5xx/503 within 2 s: mistyped, non-finite and out-of-bounds overrides, model ids
that are not the Hub's grammar or are server folders outside the model roots, oversized bodies (a 10 GB
Content-Length with no body is answered at once), no echo of the URL path, a locked and a corrupt database,
corrupt run files, a symlink in a purged run, repeated wrong tokens (429), and an unexpected error (500 with
no detail, the traceback in the replica's log). No job here reaches Ray Jobs: records are written into the
app's own SQLite file, so these tests cost seconds.
"""

from __future__ import annotations

import json
import secrets
import socket
import sqlite3
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest
import requests
from ray import serve

from deepsynth.jobs.store import JobStore
from serve.jobs import JobsAPI, build_app

APP = "deepsynth-jobs-hardening"
ROUTE = "/hardened"
API_TOKEN = "api-" + secrets.token_hex(16)
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
FAILED_LOGINS = 5
MAX_BODY = 8192
FAST = 2.0  # seconds: every answer here must come within this


@pytest.fixture(scope="module")
def api(ray_cluster, serve_url, tmp_path_factory):
    root = tmp_path_factory.mktemp("jobs-hardening")
    (root / "api-token").write_text(API_TOKEN)
    (root / "models" / "tiny").mkdir(parents=True)
    (root / "storage").mkdir()
    # Not a folder: listing datasets fails in a way no handler expects (a 500, our bug, without detail).
    (root / "storage" / "datasets").write_text("not a folder")
    args = {"state_dir": str(root / "state"), "storage": str(root / "storage"),
            "api_token_file": str(root / "api-token"), "ray_dashboard_url": ray_cluster.dashboard_url,
            "model_roots": [str(root / "models")], "max_workers": 2, "rate_per_minute": 1000, "rate_burst": 1000,
            "failed_logins_per_minute": FAILED_LOGINS, "max_body_bytes": MAX_BODY}
    build_app(args)
    serve.run(JobsAPI.bind(args), name=APP, route_prefix=ROUTE)
    yield {"base": serve_url + ROUTE, "root": root, "args": args, "logs": ray_cluster.logs_dir}
    serve.delete(APP)


def timed(api, method: str, path: str, headers: dict | None = AUTH, **kwargs) -> requests.Response:
    start = time.monotonic()
    response = requests.request(method, api["base"] + path, headers=headers, timeout=30, **kwargs)
    elapsed = time.monotonic() - start
    assert elapsed < FAST, f"{method} {path} took {elapsed:.1f} s"
    assert response.headers["content-type"].startswith("application/json"), response.text
    return response


def post_job(api, overrides: dict, job_type: str = "train", preset: str = "cpu_smoke") -> requests.Response:
    # Serialized here, not by requests: it refuses NaN and Infinity, which Python's JSON parser (FastAPI's) reads.
    body = json.dumps({"type": job_type, "preset": preset, "overrides": overrides})
    return timed(api, "POST", "/jobs", data=body, headers={**AUTH, "Content-Type": "application/json"})


def record(api, run: str, status: str = "failed", job_type: str = "train", submissions: tuple[str, ...] = ()):
    """A job record written into the app's own database, as if the app had created it."""
    store = JobStore(api["root"] / "state" / "jobs.sqlite3", clock=time.time)
    job, _ = store.create(job_type=job_type, preset="cpu_smoke", overrides={}, run_name=run,
                          run_dir=str(api["root"] / "storage" / "runs" / run), total_steps=8, idempotency_key=None)
    for submission in submissions:
        store.add_submission(job.id, submission)
    if status != "queued":
        store.transition(job.id, status, expected="queued")
    store.close()
    return job.id


@pytest.mark.parametrize("job_type,preset,overrides,says", [
    ("train", "cpu_smoke", {"dataset": ["builtin"]}, "overrides.dataset expects str"),
    ("train", "cpu_smoke", {"dataset": {"name": "builtin"}}, "overrides.dataset expects str"),
    ("evaluate", "builtin", {"model": "a/b", "dataset": {"x": 1}}, "overrides.dataset expects str"),
    ("train", "cpu_smoke", {"lr": "1e-3"}, "overrides.lr expects finite float"),
    ("train", "cpu_smoke", {"max_steps": [8]}, "overrides.max_steps expects int"),
    ("train", "cpu_smoke", {"weight_decay": float("nan")}, "weight_decay"),
    ("train", "cpu_smoke", {"cpus_per_worker": float("inf")}, "cpus_per_worker"),
    ("train", "cpu_smoke", {"lora_targets": [{}]}, "overrides.lora_targets expects"),
    ("train", "cpu_smoke", {"model": "org/name\n"}, "model roots"),
    ("train", "cpu_smoke", {"model": "org/ name"}, "model roots"),
    ("train", "cpu_smoke", {"model": "ray_jobs/configs"}, "model roots"),
    ("train", "cpu_smoke", {"model": "/etc"}, "model roots"),
    ("train", "cpu_smoke", {"model": "x" * 5000}, "model roots"),
    ("train", "cpu_smoke", {"max_length": 10**12}, "max_length must be in"),
    ("evaluate", "builtin", {"model": "a/b", "num_beams": 1000}, "num_beams must be in"),
    ("evaluate", "builtin", {"model": "a/b", "max_new_tokens": 10**6}, "max_new_tokens must be in"),
    ("evaluate", "builtin", {"model": "a/b", "concurrency": 64}, "above this server's limit of 2"),
    ("evaluate", "builtin", {"model": "a/b", "layout": "letter"}, "Unknown page layout"),
    ("evaluate", "builtin", {"model": "a/b", "layout": ["ocr2-page"]}, "overrides.layout expects"),
    ("tune", "sweep_cpu", {"ranks": list(range(1, 65)), "lrs": [1e-4, 2e-4, 3e-4, 4e-4, 5e-4]}, "MAX_TRIALS=256"),
    ("tune", "sweep_cpu", {"lrs": [float("nan")]}, "overrides.lrs expects"),
    ("prepare_dataset", "builtin", {"limit": 2.5}, "overrides.limit expects"),
])
def test_mistyped_unbounded_and_foreign_overrides_are_a_422(api, job_type, preset, overrides, says):
    response = post_job(api, overrides, job_type, preset)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["type"] in ("invalid_job", "invalid_request") and says in error["message"], error


def test_an_unexpected_error_is_a_json_500_without_detail_and_its_traceback_is_logged(api):
    response = timed(api, "GET", "/datasets/generated")
    assert response.status_code == 500
    assert response.json() == {"error": {"type": "internal_error",
                                         "message": "The server failed on this request; see the replica's log."}}
    logs = "".join(path.read_text(errors="replace") for path in (api["logs"] / "serve").glob(f"replica_{APP}_*.log"))
    assert "Unhandled error on GET /datasets/generated" in logs and "Traceback" in logs


def test_a_body_over_the_limit_is_a_413_before_it_is_read(api):
    host, port = urlparse(api["base"]).hostname, urlparse(api["base"]).port
    # 10 GB declared, nothing sent: the answer must not wait for the body.
    with socket.create_connection((host, port), timeout=FAST) as sock:
        start = time.monotonic()
        sock.sendall((f"POST {ROUTE}/jobs HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {API_TOKEN}\r\n"
                      "Content-Type: application/json\r\nContent-Length: 10000000000\r\n\r\n").encode())
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        assert time.monotonic() - start < FAST
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), answer[:300]
    assert json.loads(body)["error"]["type"] == "payload_too_large"

    big = {"type": "train", "preset": "cpu_smoke", "overrides": {"prompt": "x" * (2 * MAX_BODY)}}
    response = timed(api, "POST", "/jobs", json=big)
    assert response.status_code == 413 and response.json()["error"]["type"] == "payload_too_large"
    assert f"{MAX_BODY:,} bytes" in response.json()["error"]["message"]

    def chunked():  # no Content-Length: the limit applies as the body streams in
        yield b'{"type": "train", "preset": "cpu_smoke", "overrides": {"prompt": "'
        for _ in range(8):
            yield b"x" * 4096
        yield b'"}}'

    response = timed(api, "POST", "/jobs", data=chunked(), headers={**AUTH, "Content-Type": "application/json"})
    assert response.status_code == 413 and response.json()["error"]["type"] == "payload_too_large", response.text
    assert post_job(api, {"lr": -1}).status_code == 422, "a small body still gets through"


def test_error_bodies_never_echo_the_path(api):
    secret = "hf_" + secrets.token_hex(16)
    for method, path in (("GET", f"/jobs/{secret}"), ("GET", f"/jobs/{secret}/logs"), ("DELETE", f"/jobs/{secret}"),
                         ("GET", f"/no-such-route/{secret}"), ("PUT", f"/jobs/{secret}"),
                         ("POST", f"/jobs/{secret}/pause")):
        response = timed(api, method, path)
        assert response.status_code in (404, 405), (method, path, response.text)
        assert secret not in response.text and "error" in response.json(), response.text
    # A path under no application's prefix is answered by Ray Serve's proxy itself (its middleware's JSON 404).
    response = requests.get(f"{api['base'].removesuffix(ROUTE)}/no-such-app/{secret}", headers=AUTH, timeout=30)
    assert response.status_code == 404 and response.json()["error"] == "not_found", response.text
    assert secret not in response.text


def test_a_locked_database_is_a_503_with_retry_after(api):
    other = sqlite3.connect(api["root"] / "state" / "jobs.sqlite3", isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # another process holds the lock: a backup, an operator's shell
    try:
        for method, path in (("GET", "/jobs"), ("GET", "/jobs/job-x")):
            response = timed(api, method, path)
            assert response.status_code == 503 and response.json()["error"]["type"] == "store_busy", response.text
            assert int(response.headers["Retry-After"]) >= 1
        response = post_job(api, {"max_steps": 2, "model": "a/b"})
        assert response.status_code == 503 and response.json()["error"]["type"] == "store_busy", response.text
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert timed(api, "GET", "/jobs").status_code == 200


def test_corrupt_run_files_are_skipped_by_listings_and_start_up(api):
    runs = api["root"] / "storage" / "runs"
    good, bad = runs / "run-good" / "step-000002", runs / "run-bad"
    good.mkdir(parents=True)
    (good / "meta.json").write_text(json.dumps({"step": 2, "metrics": {"val_loss": 1.0}}))
    (bad / "step-000001").mkdir(parents=True)
    (bad / "step-000001" / "meta.json").write_text('{"step": 1, "metri')  # a save cut short
    (bad / "checkpoint_manager_snapshot.json").write_text('{"latest_checkpoint_result": {"checkpoint_dir_na')
    (bad / "logs").mkdir()
    (bad / "logs" / "metrics.jsonl").write_bytes(b"\xff\xfe[]\n{\"step\": 1, \"loss\": 2.0}\n")
    finished = record(api, "run-bad")
    # Active, with an attempt Ray never heard of: start-up reconciliation reads the run's corrupt snapshot.
    active = record(api, "run-bad", status="running", submissions=("job-unknown-to-ray-1",))

    checkpoints = timed(api, "GET", "/training/checkpoints")
    assert checkpoints.status_code == 200 and [r["run"] for r in checkpoints.json()] == ["run-good"]
    job = timed(api, "GET", f"/jobs/{finished}")
    assert job.status_code == 200 and job.json()["checkpoints"] == [] and job.json()["resume_step"] is None
    assert job.json()["progress"]["step"] == 1
    assert timed(api, "GET", "/jobs").status_code == 200

    serve.run(JobsAPI.bind(api["args"]), name=APP, route_prefix=ROUTE)  # a replica start over the same state
    job = timed(api, "GET", f"/jobs/{active}").json()
    assert job["status"] == "failed" and "left no checkpoint" in job["error"], job


def test_purge_removes_a_symlink_in_the_run_never_its_target(api, tmp_path):
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "weights.safetensors").write_text("keep me")
    job = record(api, "run-linked")
    run = api["root"] / "storage" / "runs" / "run-linked"
    (run / "logs").mkdir(parents=True)
    (run / "logs" / "elsewhere").symlink_to(outside, target_is_directory=True)
    (run / "weights.safetensors").symlink_to(outside / "weights.safetensors")
    response = timed(api, "DELETE", f"/jobs/{job}", params={"purge": "true"})
    assert response.status_code == 200 and response.json()["purged"] == [str(run)], response.text
    assert not run.exists() and (outside / "weights.safetensors").read_text() == "keep me"

    job = record(api, "run-is-a-link")  # the run folder itself a link: only the link goes, not what it names
    run = api["root"] / "storage" / "runs" / "run-is-a-link"
    run.symlink_to(outside, target_is_directory=True)
    response = timed(api, "DELETE", f"/jobs/{job}", params={"purge": "true"})
    assert response.status_code == 200, response.text
    assert not run.is_symlink() and (outside / "weights.safetensors").read_text() == "keep me"


def test_a_corrupt_database_stops_the_replica_saying_how_to_recover(api, tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / "jobs.sqlite3").write_bytes(b"not a database, a half-copied backup " * 200)
    args = {**api["args"], "state_dir": str(state)}
    try:
        with pytest.raises(RuntimeError, match="failed"):
            serve.run(JobsAPI.bind(args), name=APP + "-corrupt", route_prefix=ROUTE + "-corrupt")
        # Serve gives up after a few constructor attempts, and says why in the deployment's status.
        deployment = serve.status().applications[APP + "-corrupt"].deployments["JobsAPI"]
        assert deployment.status == "DEPLOY_FAILED", deployment
        assert "is corrupt (file is not a database)" in deployment.message and "move it aside" in deployment.message
    finally:
        serve.delete(APP + "-corrupt")


def test_repeated_wrong_tokens_from_one_client_are_a_429(api):
    # Last in the module: it locks this client out of the app until its bucket refills.
    wrong = {"Authorization": "Bearer wrong-" + API_TOKEN}
    statuses = [timed(api, "GET", "/jobs", headers=wrong).status_code for _ in range(FAILED_LOGINS + 1)]
    assert statuses == [401] * FAILED_LOGINS + [429], statuses
    for headers in (wrong, {}, AUTH):  # while throttled, a right token waits too: guessing gets no faster
        response = timed(api, "GET", "/jobs", headers=headers)
        assert response.status_code == 429 and response.json()["error"]["type"] == "too_many_failed_logins"
        assert 1 <= int(response.headers["Retry-After"]) <= 60 / FAILED_LOGINS + 1
    assert timed(api, "GET", "/healthz", headers={}).status_code == 200, "health checks are never throttled"
