"""The job library without Ray: the SQLite store, request validation into entrypoints, rate limits, secrets, progress."""

from __future__ import annotations

import json
import shlex
import sqlite3
from pathlib import Path

import pytest
from pydantic import ValidationError

from deepsynth.jobs.progress import latest_metrics, list_checkpoints, list_runs, resume_step
from deepsynth.jobs.ratelimit import RateLimiter
from deepsynth.jobs.secrets import REDACTED, scrub, secret_values
from deepsynth.jobs.specs import JobRequest, JobSettings, SpecError, build_spec, list_presets
from deepsynth.jobs.store import InvalidTransition, JobNotFound, JobStore

PROJECT = Path(__file__).resolve().parents[2]


class FakeClock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def new_record(store: JobStore, key: str | None = None):
    return store.create(job_type="train", preset="cpu_smoke", overrides={"lr": 0.1}, run_name="r", run_dir="/x/r",
                        total_steps=8, idempotency_key=key)


def test_store_transitions_idempotency_and_reopen(tmp_path):
    clock = FakeClock()
    store = JobStore(tmp_path / "jobs.sqlite3", clock=clock)
    record, created = new_record(store, key="k1")
    assert created and record.status == "queued"
    again, created = new_record(store, key="k1")
    assert not created and again.id == record.id
    assert store.get_by_key("k1").id == record.id and store.get_by_key("k2") is None
    clock.now += 5
    store.transition(record.id, "running", expected="queued")
    store.add_submission(record.id, f"{record.id}-1")
    with pytest.raises(InvalidTransition, match="Cannot resume .* it is 'running'"):
        store.transition(record.id, "queued", expected="paused", action="resume")
    with pytest.raises(InvalidTransition, match="it is 'running'"):  # no move from a status it has left
        store.transition(record.id, "pausing", expected="queued")
    with pytest.raises(InvalidTransition):  # already there is not a move either
        store.transition(record.id, "running", expected="running")
    store.transition(record.id, "pausing", expected="running")
    assert store.transition(record.id, "paused", expected="pausing", error="stopped by a pause").error
    with pytest.raises(InvalidTransition):  # a rollback that expects other submissions changes nothing
        store.transition(record.id, "queued", expected="paused", expected_submissions=[])
    assert store.transition(record.id, "queued", expected="paused").error is None, "a new attempt clears the error"
    with pytest.raises(InvalidTransition):
        store.delete(record.id, expected="paused")
    store.transition(record.id, "succeeded", expected="queued")
    for target in ("running", "pausing", "paused", "queued", "failed"):
        with pytest.raises(InvalidTransition):
            store.transition(record.id, target, expected="succeeded")
    store.close()

    reopened = JobStore(tmp_path / "jobs.sqlite3", clock=clock).get(record.id)
    assert (reopened.status, reopened.submissions, reopened.updated) == ("succeeded", [f"{record.id}-1"], 1005.0)
    with pytest.raises(JobNotFound):
        JobStore(tmp_path / "jobs.sqlite3", clock=clock).delete("job-unknown")


def test_rate_limiter_refills_with_the_clock():
    clock = FakeClock()
    limiter = RateLimiter(per_minute=6, burst=2, clock=clock)  # one token per 10 s
    assert limiter.acquire("a") == 0 and limiter.acquire("a") == 0
    assert limiter.acquire("a") == 10
    assert limiter.acquire("b") == 0, "buckets are per key"
    clock.now += 4
    assert limiter.acquire("a") == 6
    clock.now += 6
    assert limiter.acquire("a") == 0


def test_secret_values_and_scrub():
    canary = "hf_" + "Canary1234567890abcdef"
    secrets = secret_values({"HF_TOKEN": canary, "AWS_SECRET_ACCESS_KEY": "aws-secret-value-1", "HOME": "/root",
                             "SHORT_TOKEN": "abc"}, extra=["api-token-0123456789"])
    assert secrets == {canary, "aws-secret-value-1", "api-token-0123456789"}
    text = f"token={canary} key=aws-secret-value-1 other hf_{'x' * 20} api-token-0123456789 /root"
    cleaned = scrub(text, secrets)
    assert canary not in cleaned and "aws-secret-value-1" not in cleaned and "hf_xxxx" not in cleaned
    assert cleaned.count(REDACTED) == 4 and cleaned.endswith("/root")


@pytest.fixture
def settings(tmp_path, tiny_model_dir):
    return JobSettings(storage=str(tmp_path / "storage"), configs_dir=PROJECT / "ray_jobs" / "configs",
                       project_dir=PROJECT, python="/usr/bin/python3", model_roots=(str(Path(tiny_model_dir).parent),),
                       max_workers=2)


def argv_of(entrypoint: str) -> list[str]:
    return shlex.split(entrypoint.split(" && exec ", 1)[1])


def test_train_spec_is_server_built_and_quoted(settings, tiny_model_dir):
    hostile = "x'; touch /tmp/pwned; echo '$(id)`id`"
    spec = build_spec(JobRequest(type="train", preset="cpu_smoke",
                                 overrides={"model": str(tiny_model_dir), "max_steps": 3, "prompt": hostile,
                                            "lora_targets": ["q_proj", "v_proj"]}), "job-abc", settings)
    argv = argv_of(spec.entrypoint)
    assert argv[:5] == ["/usr/bin/python3", "-m", "ray_jobs.train", "--config",
                        str(PROJECT / "ray_jobs" / "configs" / "cpu_smoke.yaml")]
    assert f"prompt={json.dumps(hostile)}" in argv, "the hostile value stays one argument"
    assert f"storage_path={json.dumps(settings.runs_root)}" in argv and 'run_name="job-abc"' in argv
    assert "build_tiny_model=false" in argv
    assert spec.total_steps == 3 and spec.run_dir == f"{settings.runs_root}/job-abc"

    from deepsynth.training.config import load_config

    config = load_config(argv[4], argv[5:])  # the train script's own parsing of what we built
    assert (config.prompt, config.max_steps, config.lora_targets) == (hostile, 3, ["q_proj", "v_proj"])
    assert config.storage_path == settings.runs_root and config.model == str(tiny_model_dir)


@pytest.mark.parametrize("job_type,preset,overrides,match", [
    ("train", "nope", {}, "not a train preset"),
    ("train", "sweep_cpu", {}, "not a train preset"),
    ("train", "cpu_smoke", {"storage_path": "/etc"}, "storage_path cannot be set"),
    ("train", "cpu_smoke", {"run_name": "other"}, "run_name cannot be set"),
    ("train", "cpu_smoke", {"model": "/etc"}, "model roots"),
    ("train", "cpu_smoke", {"model": "../../x"}, "model roots"),
    ("train", "cpu_smoke", {"dataset": "/etc/passwd.csv"}, "prepared:<name>"),
    ("train", "cpu_smoke", {"dataset": "prepared:missing"}, "not a prepared dataset"),
    ("train", "cpu_smoke", {"num_workers": 9}, "limit of 2"),
    ("train", "cpu_smoke", {"trust_remote_code": True}, "not allowed"),
    ("train", "cpu_smoke", {"lrr": 0.1}, "Did you mean lr"),
    ("train", "cpu_smoke", {"lr": -1}, "lr must be positive"),
    ("train", "cpu_smoke", {"prompt": "hf_" + "A" * 30}, "secret"),
    ("tune", "sweep_cpu", {"base_config": "/etc/x.yaml"}, "base_config cannot be set"),
    ("tune", "sweep_cpu", {"overrides": {"storage_path": "/tmp"}}, "overrides.overrides.storage_path"),
    ("tune", "sweep_cpu", {"ranks": [0]}, "ranks must be positive"),
    ("evaluate", "nope", {}, "not a benchmark"),
    ("evaluate", "builtin", {"checkpoint": "../x/step-000001"}, "<run>/step-XXXXXX"),
    ("evaluate", "builtin", {"checkpoint": "r/step-000001", "model": "a/b"}, "exactly one"),
    ("prepare_dataset", "/etc/x.csv", {}, None),
    ("prepare_dataset", "builtin", {"output": "/tmp"}, "output cannot be set"),
    ("prepare_dataset", "builtin", {"name": "builtin-50"}, "name cannot be set"),
    ("prepare_dataset", "builtin", {"limit": "ten"}, "wrong type"),
    ("evaluate", "builtin", {"model": "a/b", "limit": "ten"}, "wrong type"),
    ("prepare_dataset", "builtin", {"splits": ["dev"]}, "splits must be"),
])
def test_bad_requests_are_refused_naming_the_field(settings, job_type, preset, overrides, match):
    if match is None:  # refused by the schema itself
        with pytest.raises(ValidationError):
            JobRequest(type=job_type, preset=preset, overrides=overrides)
        return
    with pytest.raises(SpecError, match=match):
        build_spec(JobRequest(type=job_type, preset=preset, overrides=overrides), "job-1", settings,
                   frozenset({"hf_" + "A" * 30}))


def test_request_schema_forbids_entrypoint_and_runtime_env():
    for extra in ({"entrypoint": "rm -rf /"}, {"runtime_env": {"env_vars": {"A": "1"}}}, {"resources": {"GPU": 8}}):
        with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
            JobRequest(type="train", preset="cpu_smoke", **extra)


def test_tune_evaluate_and_prepare_specs(settings, tmp_path):
    tune = build_spec(JobRequest(type="tune", preset="sweep_cpu", overrides={"ranks": [4], "overrides": {"max_steps": 2}}),
                      "job-t", settings)
    assert "ray_jobs.tune_lora" in tune.entrypoint and "sweep_name: job-t" in tune.entrypoint
    assert f"storage_path: {settings.runs_root}" in tune.entrypoint

    run = Path(settings.runs_root) / "run1" / "step-000002"
    run.mkdir(parents=True)
    (run / "meta.json").write_text(json.dumps({"step": 2, "metrics": {"val_loss": 1.5}}))
    evaluate = argv_of(build_spec(JobRequest(type="evaluate", preset="builtin",
                                             overrides={"checkpoint": "run1/step-000002", "limit": 4}),
                                  "job-e", settings).entrypoint)
    assert evaluate[evaluate.index("--checkpoint") + 1] == str(run)
    assert evaluate[evaluate.index("--out") + 1] == f"{settings.storage}/evals/job-e/report.json"

    assert build_spec(JobRequest(type="evaluate", preset="builtin", overrides={"model": "a/b"}), "job-e",
                      settings).num_gpus == 0
    on_gpu = {"model": "a/b", "device": "cuda"}
    assert build_spec(JobRequest(type="evaluate", preset="builtin", overrides=on_gpu), "job-e", settings).num_gpus == 1
    assert build_spec(JobRequest(type="evaluate", preset="builtin", overrides={**on_gpu, "ray_data": True}), "job-e",
                      settings).num_gpus == 0, "with Ray Data the GPU actors hold the GPUs, not the driver"
    on_s3 = JobSettings(storage="s3://bucket/deepsynth", configs_dir=settings.configs_dir,
                        project_dir=settings.project_dir, python=settings.python)
    with pytest.raises(SpecError, match="shared filesystem"):
        build_spec(JobRequest(type="evaluate", preset="builtin", overrides={"model": "a/b"}), "job-e", on_s3)

    prepare = build_spec(JobRequest(type="prepare_dataset", preset="builtin", overrides={"limit": 5}), "job-p", settings)
    argv = argv_of(prepare.entrypoint)
    assert argv[argv.index("--output") + 1] == settings.storage and argv[argv.index("--name") + 1] == "job-p"
    assert prepare.run_dir == f"{settings.datasets_root}/job-p"

    kinds = {p["name"]: p["type"] for p in list_presets(settings.configs_dir)}
    assert kinds["cpu_smoke"] == "train" and kinds["sweep_cpu"] == "tune"


def test_progress_reads_metrics_and_complete_checkpoints(tmp_path):
    run = tmp_path / "runs" / "r1"
    (run / "logs").mkdir(parents=True)
    lines = [{"step": 0, "val_loss": 2.0}, {"step": 1, "loss": 1.9}, {"step": 2, "loss": 1.8}]
    (run / "logs" / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + '\n{"step": 3, "lo')
    assert latest_metrics(str(run)) == {"step": 2, "loss": 1.8}
    (run / "step-000002").mkdir()
    (run / "step-000002" / "meta.json").write_text(json.dumps({"step": 2, "metrics": {"val_loss": 1.7}}))
    (run / "step-000004.tmp").mkdir()  # being written
    (run / "step-000003").mkdir()  # no meta.json: incomplete
    assert [(c["step"], c["metrics"]) for c in list_checkpoints(str(run))] == [(2, {"val_loss": 1.7})]
    assert [r["run"] for r in list_runs(str(tmp_path / "runs"))] == ["r1"]
    assert resume_step(str(run)) is None, "a folder Ray Train never registered is not where a resume starts"
    (run / "checkpoint_manager_snapshot.json").write_text(json.dumps(
        {"latest_checkpoint_result": {"checkpoint_dir_name": "step-000002", "metrics": {}}}))
    assert resume_step(str(run)) == 2
    assert latest_metrics(str(tmp_path / "none")) is None and list_runs(str(tmp_path / "none")) == []


def test_store_rows_hold_no_secret_columns(tmp_path):
    store = JobStore(tmp_path / "j.sqlite3", clock=FakeClock())
    new_record(store)
    columns = [row[1] for row in sqlite3.connect(tmp_path / "j.sqlite3").execute("PRAGMA table_info(jobs)")]
    assert not any(word in c for c in columns for word in ("env", "token", "entrypoint"))
