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
from polling import wait_for
from ray import serve

from deepsynth.jobs.store import JobStore, new_job_id
from serve.jobs import JobsAPI, build_app

APP = "deepsynth-console-api"
ROUTE = "/console-api"
API_TOKEN = "api-" + secrets.token_hex(16)
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
CANARY = "hf_canary" + secrets.token_hex(12)
MAX_UPLOAD = 256 * 1024
MAX_ROWS = 40


@pytest.fixture(scope="module")
def api(ray_cluster, serve_url, tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("console-api")
    (root / "api-token").write_text(API_TOKEN)
    args = {"state_dir": str(root / "state"), "storage": str(root / "storage"),
            "api_token_file": str(root / "api-token"), "ray_dashboard_url": ray_cluster.dashboard_url,
            "model_roots": [str(Path(tiny_model_dir).parent)], "max_workers": 2, "rate_per_minute": 1000,
            "rate_burst": 1000, "failed_logins_per_minute": 1000, "max_upload_bytes": MAX_UPLOAD,
            "max_upload_rows": MAX_ROWS}
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


def run_job(api, body: dict, timeout: float) -> str:
    """Create a job and wait for it to succeed (else fail with its logs); -> its id."""
    # Right after the cluster starts, Ray Jobs may have no agent yet; the API says so with a 503 and Retry-After.
    created = wait_for(lambda: call(api, "POST", "/jobs", json=body), lambda r: r.status_code != 503, 60,
                       "Ray Jobs to accept a job")
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]
    done = wait_for(lambda: call(api, "GET", f"/jobs/{job_id}").json(),
                    lambda j: j["status"] in ("succeeded", "failed", "stopped"), timeout, f"job {job_id}")
    assert done["status"] == "succeeded", call(api, "GET", f"/jobs/{job_id}/logs", params={"tail": 60}).text
    return job_id


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


def write_run_log(run_dir: Path, steps: int, start: int = 1) -> None:
    """A run's metrics.jsonl as the training loop writes it (its own MetricsLog): an initial val loss at step 0,
    then one report per step."""
    from deepsynth.training.telemetry import MetricsLog

    log = MetricsLog(run_dir / "logs", run_dir.name, {})
    if start == 1:
        log.log(0, {"val_loss": 3.0, "trainable_parameters": 100})
    for step in range(start, start + steps):
        log.log(step, {"step": step, "loss": 3.0 / step, "val_loss": 2.0, "lr": 1e-3, "samples_per_s": 4.0,
                       "data_wait_share": 0.1, "peak_memory_mb": 50.0})
    log.close()


def test_metrics_pages_through_the_run_log(api):
    job = record(api)
    run = api["storage"] / "runs" / job
    assert call(api, "GET", f"/jobs/{job}/metrics").json() == {
        "job_id": job, "trial": None, "records": [], "next_since": -1, "more": False}, "no log yet"
    write_run_log(run, 25)
    with (run / "logs" / "metrics.jsonl").open("a") as f:
        f.write('{"step": 26, "loss": 0.1')  # the loop is appending this one: not complete yet

    everything = call(api, "GET", f"/jobs/{job}/metrics").json()
    assert [r["step"] for r in everything["records"]] == list(range(26)) and everything["more"] is False
    assert everything["records"][5] == json.loads((run / "logs" / "metrics.jsonl").read_text().splitlines()[5])
    assert everything["next_since"] == 25

    steps, since, pages = [], -1, 0
    while True:
        page = call(api, "GET", f"/jobs/{job}/metrics", params={"since": since, "limit": 10}).json()
        assert len(page["records"]) <= 10
        steps += [r["step"] for r in page["records"]]
        since, pages = page["next_since"], pages + 1
        if not page["more"]:
            break
    assert steps == list(range(26)) and pages == 3
    polled = call(api, "GET", f"/jobs/{job}/metrics", params={"since": 25}).json()
    assert polled["records"] == [] and polled["next_since"] == 25, "nothing new yet"

    # The train job's view reads the same log, from its tail.
    assert call(api, "GET", f"/jobs/{job}").json()["latest_metrics"]["step"] == 25


def test_metrics_bad_requests(api):
    job = record(api)
    for params, field in (({"since": -2}, "since"), ({"since": "x"}, "since"), ({"limit": 0}, "limit"),
                          ({"limit": 10_001}, "limit"), ({"trial": "x"}, "trial")):
        response = call(api, "GET", f"/jobs/{job}/metrics", params=params)
        assert response.status_code == 422 and response.json()["error"]["field"] == field, (params, response.text)
    assert call(api, "GET", "/jobs/job-nope/metrics").status_code == 404
    assert call(api, "GET", "/jobs/job-nope/trials").status_code == 404
    evaluation = record(api, job_type="evaluate", preset="builtin", overrides={"model": "a/b"})
    response = call(api, "GET", f"/jobs/{evaluation}/metrics")
    assert response.status_code == 409 and "only ['train', 'tune'] jobs" in response.json()["error"]["message"]
    assert call(api, "GET", f"/jobs/{job}/trials").status_code == 409, "a train job has no trials"
    sweep = record(api, job_type="tune", preset="sweep_cpu", overrides={"ranks": [2]})
    response = call(api, "GET", f"/jobs/{sweep}/metrics")
    assert response.status_code == 422 and response.json()["error"]["field"] == "trial"
    assert f"{sweep}-r2-a4-lr0.003-d0" in response.json()["error"]["message"], "it names the trials"


def test_trials_of_a_running_sweep(api):
    sweep = record(api, job_type="tune", status="running", preset="sweep_cpu", overrides={"ranks": [2, 4, 6]})
    runs = [f"{sweep}-r{rank}-a{2 * rank}-lr0.003-d0" for rank in (2, 4, 6)]
    write_run_log(api["storage"] / "runs" / runs[0], 3)  # the first trial has trained 3 steps
    view = call(api, "GET", f"/jobs/{sweep}/trials").json()
    assert view["job_id"] == sweep and view["status"] == "running" and [t["run"] for t in view["trials"]] == runs
    first, second, third = view["trials"]
    assert (first["rank"], first["alpha"], first["lr"], first["dropout"]) == (2, 4, 0.003, 0.0)
    assert first["status"] == "running" and second["status"] == third["status"] == "pending"
    assert first["step"] == 3 and first["val_loss"] == 2.0 and first["samples_per_s"] == 4.0
    assert first["rouge_l"] is None and first["checkpoint"] is None and second["step"] is None
    assert view["best"] is None and not any(t["best"] for t in view["trials"]), "no trial has finished"

    store = JobStore(api["root"] / "state" / "jobs.sqlite3", clock=time.time)
    store.transition(sweep, "stopped", expected="running")
    store.close()
    view = call(api, "GET", f"/jobs/{sweep}/trials").json()
    assert view["status"] == "stopped" and {t["status"] for t in view["trials"]} == {"stopped"}

    metrics = call(api, "GET", f"/jobs/{sweep}/metrics", params={"trial": runs[0], "since": 1}).json()
    assert metrics["trial"] == runs[0] and [r["step"] for r in metrics["records"]] == [2, 3]
    assert call(api, "GET", f"/jobs/{sweep}/metrics", params={"trial": runs[1]}).json()["records"] == []


def jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def documents(n: int, text: str = "text", summary: str = "summary") -> list[dict]:
    from deepsynth.data.corpus import generate_corpus

    return [{text: d["text"], summary: d["summary"]} for d in generate_corpus("train", n)]


def upload(api, name: str, content: bytes, filename: str = "docs.jsonl", **fields) -> requests.Response:
    return call(api, "POST", "/datasets", files={"file": (filename, content, "application/octet-stream")},
                data={"name": name, **fields})


@pytest.fixture(scope="module")
def uploaded(api, tiny_model_dir):
    """A 12-document JSONL upload with its own field names, and its prepare job run to the end on Ray Jobs."""
    content = jsonl(documents(12, text="article", summary="headline"))
    overrides = json.dumps({"model": str(tiny_model_dir), "max_pages": 4})
    response = wait_for(lambda: upload(api, "my-news", content, text_field="article", summary_field="headline",
                                       validation_rows="3", overrides=overrides),
                        lambda r: r.status_code != 503, 60, "Ray Jobs to accept a job")
    assert response.status_code == 202, response.text
    job = response.json()["job"]
    done = wait_for(lambda: call(api, "GET", f"/jobs/{job['id']}").json(),
                    lambda j: j["status"] in ("succeeded", "failed", "stopped"), 300, "the prepare job")
    assert done["status"] == "succeeded", call(api, "GET", f"/jobs/{job['id']}/logs", params={"tail": 40}).text
    return {"response": response.json(), "job": done}


def test_an_upload_is_prepared_as_a_dataset(api, uploaded):
    result = uploaded["response"]
    assert result["dataset"] == "prepared:my-news" and result["rows"] == {"train": 9, "validation": 3}
    job = result["job"]
    assert job["type"] == "prepare_dataset" and job["preset"] == "upload:my-news" and job["status"] in (
        "queued", "running")
    [listed] = [u for u in call(api, "GET", "/datasets/uploads").json() if u["name"] == "my-news"]
    assert listed["status"] == "ready" and listed["job_id"] == job["id"] and listed["job_status"] == "succeeded"
    assert (listed["dataset"], listed["filename"], listed["format"]) == ("prepared:my-news", "docs.jsonl", "jsonl")
    assert (listed["text_field"], listed["summary_field"], listed["rows"]) == ("article", "headline",
                                                                                 {"train": 9, "validation": 3})
    [generated] = [d for d in call(api, "GET", "/datasets/generated").json() if d["name"] == "my-news"]
    assert generated["splits"] == {"train": 9, "validation": 3} and generated["summary"]["visual_tokens"] > 0
    # Every uploaded document is in exactly one split, with its text and summary as sent.
    from deepsynth.data.prepared import load_prepared_records

    folder = generated["path"]
    sent = {(d["article"], d["headline"]) for d in documents(12, text="article", summary="headline")}
    got = [(r["text"], r["summary"]) for split in ("train", "validation")
           for r in load_prepared_records(folder, split)]
    assert sorted(got) == sorted(sent)
    assert call(api, "POST", "/jobs:validate", json={"type": "train", "preset": "cpu_smoke", "overrides": {
        "dataset": "prepared:my-news"}}).status_code == 200, "a train job may name it"


@pytest.mark.slow
def test_train_on_an_uploaded_dataset(api, uploaded, tiny_model_dir):
    overrides = {"model": str(tiny_model_dir), "dataset": "prepared:my-news", "num_workers": 1, "max_steps": 2,
                 "eval_every": 2, "log_every": 1, "batch_size": 2, "train_limit": 8, "val_limit": 2}
    job_id = run_job(api, {"type": "train", "preset": "cpu_smoke", "overrides": overrides}, 300)
    metrics = call(api, "GET", f"/jobs/{job_id}/metrics").json()
    steps = [r["step"] for r in metrics["records"] if "loss" in r]
    assert steps == [1, 2] and metrics["next_since"] == 2 and all(r["loss"] > 0 for r in metrics["records"][1:])


@pytest.mark.parametrize("filename,content,fields,status,kind,field", [
    ("docs.txt", b"hello", {}, 415, "unsupported_media_type", "file"),
    ("docs", b"hello", {}, 415, "unsupported_media_type", "file"),
    ("docs.jsonl", b'{"text": "a", "summary": "b"}\n[1, 2]\n', {}, 422, "bad_file", "file"),
    ("docs.jsonl", b'{"text": "a", "summary": "b"}\n{"text": "a", "summ\n', {}, 422, "bad_file", "file"),
    ("docs.jsonl", b'{"text": "a", "summary": "b"}\n{"text": "\xff\xfe", "summary": "b"}\n', {}, 422, "bad_file",
     "file"),
    ("docs.jsonl", jsonl([{"text": "a", "summary": "b"}, {"text": "a"}]), {}, 422, "missing_field", "summary_field"),
    ("docs.jsonl", jsonl([{"body": "a", "summary": "b"}] * 2), {}, 422, "missing_field", "text_field"),
    ("docs.jsonl", jsonl([{"text": "a", "summary": "b"}, {"text": "a", "summary": "  "}]), {}, 422, "bad_rows",
     "summary_field"),
    ("docs.jsonl", jsonl([{"text": 7, "summary": "b"}] * 2), {}, 422, "bad_rows", "text_field"),
    ("docs.jsonl", jsonl([{"text": "a", "summary": "b"}]), {}, 422, "bad_rows", "file"),
    ("docs.jsonl", jsonl([{"text": "a", "summary": "b"}] * (MAX_ROWS + 1)), {}, 422, "too_many_rows", "file"),
    ("docs.jsonl", jsonl([{"text": "a", "summary": "b"}] * 4), {"validation_rows": "4"}, 422, "bad_rows",
     "validation_rows"),
    ("docs.jsonl", jsonl([{"text": "a", "summary": "b"}] * 4), {"validation_rows": "0"}, 422, "invalid_request",
     "validation_rows"),
    ("docs.jsonl", jsonl([{"text": "a", "summary": "b"}] * 4), {"overrides": "[1]"}, 422, "invalid_request",
     "overrides"),
    ("docs.jsonl", jsonl([{"text": "a", "summary": "b"}] * 4), {"overrides": '{"max_pages": 1000}'}, 422,
     "invalid_job", "overrides.max_pages"),
    ("docs.jsonl", jsonl([{"text": "a", "summary": "b"}] * 4), {"overrides": '{"source": "/etc"}'}, 422,
     "invalid_job", "overrides.source"),
    ("docs.jsonl", jsonl([{"text": "a", "summary": "b"}] * 4), {"overrides": '{"text_field": "x"}'}, 422,
     "invalid_job", "overrides.text_field"),
    ("docs.csv", b"text,summary\na,b\n\"multi\nline\",\n", {}, 422, "bad_rows", "summary_field"),
    ("docs.csv", b"body,summary\na,b\nc,d\n", {}, 422, "missing_field", "text_field"),
    ("docs.csv", b"text,summary\na,b,c,d\n", {}, 422, "bad_file", "file"),
    ("docs.csv", b"PAR1\x00\x00", {}, 422, "bad_file", "file"),
    ("docs.parquet", b"text,summary\na,b\n", {}, 422, "bad_file", "file"),
    ("docs.parquet", b"PAR1 but not really", {}, 422, "bad_file", "file"),
])
def test_bad_uploads_say_what_is_wrong_and_leave_nothing(api, filename, content, fields, status, kind, field):
    before = call(api, "GET", "/jobs").json()
    response = upload(api, "bad-upload", content, filename, **fields)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert (error["type"], error.get("field")) == (kind, field), error
    assert not (api["storage"] / "datasets" / "bad-upload").exists()
    assert call(api, "GET", "/jobs").json() == before, "no job was created"


def test_uploads_in_csv_and_parquet_are_read_strictly(api, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    numbers = tmp_path / "numbers.parquet"
    pq.write_table(pa.table({"text": [1, 2], "summary": ["a", "b"]}), numbers)
    response = upload(api, "bad-upload", numbers.read_bytes(), "numbers.parquet")
    assert response.status_code == 422 and response.json()["error"]["field"] == "text_field", response.text
    many = tmp_path / "many.parquet"
    pq.write_table(pa.table({"text": ["a"] * (MAX_ROWS + 1), "summary": ["b"] * (MAX_ROWS + 1)}), many)
    response = upload(api, "bad-upload", many.read_bytes(), "many.parquet")
    assert response.status_code == 422 and response.json()["error"]["type"] == "too_many_rows", response.text

    # A valid CSV (a quoted cell spanning lines) and a valid Parquet file get as far as the prepare job's own
    # validation, which a bad override fails: nothing is kept.
    csv_file = b'doc,gist\n"line one\nline two",short\nthird,fourth\n'
    response = upload(api, "bad-upload", csv_file, "ok.csv", text_field="doc", summary_field="gist",
                      overrides='{"layout": "no-such-layout"}')
    assert response.status_code == 422 and response.json()["error"]["field"] == "overrides.layout", response.text
    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"text": ["a", "b"], "summary": ["c", "d"]}), good)
    response = upload(api, "bad-upload", good.read_bytes(), "good.parquet", overrides='{"layout": "x"}')
    assert response.status_code == 422 and response.json()["error"]["field"] == "overrides.layout", response.text
    assert not (api["storage"] / "datasets" / "bad-upload").exists()


def test_upload_names_and_sizes(api, uploaded):
    ok = jsonl([{"text": "a", "summary": "b"}] * 4)
    for name in ("../etc", "-x", "", "a" * 65, "a/b", "prepared:x"):
        response = upload(api, name, ok)
        assert response.status_code == 422 and response.json()["error"]["field"] == "name", (name, response.text)
    taken = upload(api, "my-news", ok)
    assert taken.status_code == 409 and "exists already" in taken.json()["error"]["message"], taken.text
    response = call(api, "POST", "/datasets", data={"name": "x"})
    assert response.status_code == 422 and response.json()["error"]["field"] == "file", response.text

    # The upload route has its own, larger body limit; the others keep theirs (1 MiB by default).
    big = upload(api, "too-big", b"x" * (MAX_UPLOAD + 1))
    assert big.status_code == 413 and f"{MAX_UPLOAD:,} bytes" in big.json()["error"]["message"], big.text
    under = upload(api, "under-the-limit", b"x" * (MAX_UPLOAD - 4096), "big.txt")
    assert under.status_code == 415, "a body under the upload limit is read (and refused for its type)"


@pytest.mark.slow
def test_trials_of_a_real_sweep(api, tiny_model_dir):
    trial = {"model": str(tiny_model_dir), "num_workers": 1, "max_steps": 2, "eval_every": 2, "log_every": 1,
             "batch_size": 2, "train_limit": 4, "val_limit": 2}
    body = {"type": "tune", "preset": "sweep_cpu", "overrides": {"ranks": [4, 8], "overrides": trial,
                                                                 "rouge_documents": 2, "max_concurrent_trials": 2}}
    job_id = run_job(api, body, 600)
    view = call(api, "GET", f"/jobs/{job_id}/trials").json()
    assert [(t["rank"], t["alpha"], t["status"]) for t in view["trials"]] == [(4, 8, "done"), (8, 16, "done")]
    for row in view["trials"]:
        assert 0 <= row["rouge_l"] <= 1 and row["val_loss"] > 0 and row["step"] == 2
        assert Path(row["checkpoint"], "meta.json").exists() and row["trainable_parameters"] > 0
    best = min(view["trials"], key=lambda t: t["val_loss"])
    assert view["best"] == best["run"] and [t["best"] for t in view["trials"]] == [
        t["run"] == best["run"] for t in view["trials"]]
    metrics = call(api, "GET", f"/jobs/{job_id}/metrics", params={"trial": best["run"]}).json()
    assert [r["step"] for r in metrics["records"] if "loss" in r] == [1, 2]
