"""The job library without Ray: the SQLite store, request validation into entrypoints, rate limits, secrets, progress."""

from __future__ import annotations

import json
import logging
import shlex
import sqlite3
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from deepsynth.data.prepared import list_prepared
from deepsynth.jobs.progress import latest_metrics, list_checkpoints, list_runs, remove_tree, resume_step
from deepsynth.jobs.ratelimit import RateLimiter
from deepsynth.jobs.secrets import REDACTED, scrub, secret_values
from deepsynth.jobs.specs import JobRequest, JobSettings, SpecError, build_spec, list_presets
from deepsynth.jobs.store import CorruptStore, InvalidTransition, JobNotFound, JobStore, StoreBusy

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
    assert limiter.wait("a") == 10 and limiter.wait("a") == 10, "wait takes no token"
    assert limiter.wait("c") == 0 and limiter.wait("c") == 0 and limiter.acquire("c") == 0


def test_rate_limiter_keeps_at_most_max_keys_buckets_dropping_the_least_recently_used():
    clock = FakeClock()
    limiter = RateLimiter(per_minute=6, burst=1, clock=clock, max_keys=3)
    for host in ("a", "b", "c"):
        assert limiter.acquire(host) == 0
    assert limiter.acquire("a") == 10  # "a" is throttled, and now the most recently used
    for n in range(1000):  # clients from ever new addresses
        limiter.acquire(f"host-{n}")
        assert len(limiter) <= 3
    assert limiter.acquire("host-999") == 10 and limiter.acquire("host-998") == 10, "recent buckets are kept"
    assert limiter.acquire("b") == 0, "the least recently used bucket was dropped"


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
    ("prepare_dataset", "builtin", {"limit": "ten"}, "overrides.limit expects int"),
    ("evaluate", "builtin", {"model": "a/b", "limit": "ten"}, "overrides.limit expects int"),
    ("prepare_dataset", "builtin", {"splits": ["dev"]}, "splits must be"),
    # Strict JSON types: nothing is converted, so a list, an object or a string is never read as another type.
    ("train", "cpu_smoke", {"dataset": ["builtin"]}, "overrides.dataset expects str"),
    ("train", "cpu_smoke", {"dataset": {"name": "builtin"}}, "overrides.dataset expects str"),
    ("evaluate", "builtin", {"model": "a/b", "dataset": ["builtin"]}, "overrides.dataset expects str"),
    ("train", "cpu_smoke", {"lr": "1e-3"}, "overrides.lr expects finite float"),
    ("train", "cpu_smoke", {"max_steps": 2.5}, "overrides.max_steps expects int"),
    ("train", "cpu_smoke", {"max_steps": True}, "overrides.max_steps expects int"),
    ("train", "cpu_smoke", {"augment": "yes"}, "overrides.augment expects bool"),
    ("train", "cpu_smoke", {"lora_targets": [{}]}, "overrides.lora_targets expects str | list"),
    ("train", "cpu_smoke", {"lora_targets": 3}, "overrides.lora_targets expects str | list"),
    ("tune", "sweep_cpu", {"overrides": ["max_steps"]}, "overrides.overrides expects dict"),
    ("tune", "sweep_cpu", {"overrides": {"max_steps": "2"}}, "overrides.overrides.max_steps expects int"),
    ("prepare_dataset", "builtin", {"splits": "train"}, "overrides.splits expects list"),
    # Finite floats only, wherever a float goes.
    ("train", "cpu_smoke", {"weight_decay": float("nan")}, "weight_decay expects finite float"),
    ("train", "cpu_smoke", {"cpus_per_worker": float("inf")}, "cpus_per_worker expects finite float"),
    ("tune", "sweep_cpu", {"lrs": [float("nan")]}, "overrides.lrs expects list"),
    ("evaluate", "builtin", {"model": "a/b", "repetition_penalty": float("-inf")}, "repetition_penalty expects"),
    # Bounds of every numeric knob.
    ("train", "cpu_smoke", {"max_length": 10**12}, "max_length must be in"),
    ("train", "cpu_smoke", {"cpus_per_worker": 1e9}, "cpus_per_worker must be positive and at most"),
    ("train", "cpu_smoke", {"seed": -1}, "seed must be in"),
    ("train", "cpu_smoke", {"lr": 10.0}, "lr must be positive and at most 1"),
    ("evaluate", "builtin", {"model": "a/b", "num_beams": 17}, "num_beams must be in \\[1, 16\\]"),
    ("evaluate", "builtin", {"model": "a/b", "max_new_tokens": 10**6}, "max_new_tokens must be in"),
    ("evaluate", "builtin", {"model": "a/b", "no_repeat_ngram_size": 1000}, "ngram_window"),
    ("evaluate", "builtin", {"model": "a/b", "concurrency": 3}, "concurrency=3 is above this server's limit of 2"),
    ("evaluate", "builtin", {"model": "a/b", "limit": 10**9}, "limit must be in"),
    ("tune", "sweep_cpu", {"ranks": list(range(1, 300))}, "MAX_TRIALS=256"),
    ("tune", "sweep_cpu", {"ranks": [4, 100_000]}, "lora_rank must be in"),
    ("tune", "sweep_cpu", {"dropouts": [1.5]}, "lora_dropout must be in"),
    ("prepare_dataset", "builtin", {"rows_per_shard": 10**9}, "rows_per_shard must be in"),
    # Enumerated layouts.
    ("evaluate", "builtin", {"model": "a/b", "layout": "letter"}, "Unknown page layout"),
    ("evaluate", "builtin", {"model": "a/b", "layout": ["ocr2-page"]}, "overrides.layout expects str"),
    # Model ids: the Hub's grammar exactly, or a folder under a model root.
    ("train", "cpu_smoke", {"model": "org/name\n"}, "model roots"),
    ("train", "cpu_smoke", {"model": "org/name "}, "model roots"),
    ("train", "cpu_smoke", {"model": "org /name"}, "model roots"),
    ("train", "cpu_smoke", {"model": "org/na--me"}, "model roots"),
    ("train", "cpu_smoke", {"model": "org/-name"}, "model roots"),
    ("train", "cpu_smoke", {"model": "org/" + "n" * 97}, "model roots"),
    ("train", "cpu_smoke", {"model": "x" * 5000}, "model roots"),
    ("train", "cpu_smoke", {"model": "ray_jobs/configs"}, "model roots"),
    ("train", "cpu_smoke", {"model": "ray_jobs"}, "model roots"),
    ("evaluate", "builtin", {"model": "ray_jobs/configs"}, "model roots"),
    ("prepare_dataset", "builtin", {"model": "ray_jobs/configs"}, "model roots"),
])
def test_bad_requests_are_refused_naming_the_field(settings, job_type, preset, overrides, match):
    if match is None:  # refused by the schema itself
        with pytest.raises(ValidationError):
            JobRequest(type=job_type, preset=preset, overrides=overrides)
        return
    with pytest.raises(SpecError, match=match):
        build_spec(JobRequest(type=job_type, preset=preset, overrides=overrides), "job-1", settings,
                   frozenset({"hf_" + "A" * 30}))


def test_typed_overrides_are_accepted_as_they_are(settings, tiny_model_dir):
    for overrides in ({"lora_targets": "all"}, {"lora_targets": "default"}, {"lora_targets": ["q_proj", "v_proj"]},
                      {"lr": 1}, {"model": "deepseek-community/DeepSeek-OCR-2"}, {"model": "org_1/name.v2"},
                      {"train_limit": None}, {"model": str(tiny_model_dir)}):
        build_spec(JobRequest(type="train", preset="cpu_smoke", overrides=overrides), "job-1", settings)


def test_a_relative_model_folder_is_read_from_the_project_folder(settings, tiny_model_dir):
    model = Path(tiny_model_dir)
    # Entrypoints run in the project folder: a relative path names a folder there, allowed under a model root.
    here = JobSettings(storage=settings.storage, configs_dir=settings.configs_dir, project_dir=model.parent,
                       python=settings.python, model_roots=(str(model.parent),))
    argv = argv_of(build_spec(JobRequest(type="train", preset="cpu_smoke", overrides={"model": model.name}),
                              "job-1", here).entrypoint)
    assert f"model={json.dumps(str(model.resolve()))}" in argv
    elsewhere = JobSettings(storage=settings.storage, configs_dir=settings.configs_dir, project_dir=model.parent,
                            python=settings.python, model_roots=(str(PROJECT / "ray_jobs"),))
    with pytest.raises(SpecError, match="model roots"):
        build_spec(JobRequest(type="train", preset="cpu_smoke", overrides={"model": model.name}), "job-1", elsewhere)


def test_cli_overrides_are_still_parsed_by_yaml_but_stay_finite():
    from deepsynth.training.config import load_config

    config = load_config("ray_jobs/configs/cpu_smoke.yaml", ["lr=1e-3", "lora_targets=q_proj,v_proj", "seed=3"])
    assert (config.lr, config.lora_targets, config.seed) == (1e-3, ["q_proj", "v_proj"], 3)
    for override in ("weight_decay=.nan", "cpus_per_worker=.inf", "lr=nan"):
        with pytest.raises(ValueError, match="must be a finite number"):
            load_config("ray_jobs/configs/cpu_smoke.yaml", [override])


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


def test_corrupt_and_half_written_files_are_skipped_with_a_warning(tmp_path, caplog):
    runs = tmp_path / "runs"
    good = runs / "good" / "step-000002"
    good.mkdir(parents=True)
    (good / "meta.json").write_text(json.dumps({"step": 2, "metrics": {"val_loss": 1.0}, "created": "2026-01-01"}))
    bad = runs / "bad"
    for step, text in ((1, '{"step": 1, "metr'), (2, "[1, 2]"), (3, '{"metrics": [1]}'), (4, '{"created": 5}')):
        (bad / f"step-00000{step}").mkdir(parents=True)
        (bad / f"step-00000{step}" / "meta.json").write_text(text)
    (bad / "step-000005").mkdir()
    (bad / "step-000005" / "meta.json").write_bytes(b"\xff\xfe\x00garbage")
    (bad / "checkpoint_manager_snapshot.json").write_text('{"latest_checkpoint_result": {"checkpoint_dir')
    (bad / "logs").mkdir()
    (bad / "logs" / "metrics.jsonl").write_bytes(b'[1]\n{"loss": 2}\n\xff\xfe\n{"step": 1, "loss": 1.5}\n')
    with caplog.at_level(logging.WARNING):
        assert [r["run"] for r in list_runs(str(runs))] == ["good"]
        assert list_checkpoints(str(bad)) == [] and resume_step(str(bad)) is None
    assert sum("Skipping" in r.message for r in caplog.records) >= 5, [r.message for r in caplog.records]
    assert latest_metrics(str(bad)) == {"step": 1, "loss": 1.5}
    (bad / "checkpoint_manager_snapshot.json").write_text('{"latest_checkpoint_result": "step-000001"}')
    assert resume_step(str(bad)) is None

    datasets = tmp_path / "datasets"
    for name, text in (("half", '{"source": "bui'), ("partial", '{"source": "builtin"}')):
        (datasets / name).mkdir(parents=True)
        (datasets / name / "manifest.json").write_text(text)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert list_prepared(str(datasets)) == []
    assert len(caplog.records) == 2, [r.message for r in caplog.records]


def test_purge_never_follows_symlinks(tmp_path):
    outside = tmp_path / "outside"
    (outside / "keep").mkdir(parents=True)
    (outside / "keep" / "weights.bin").write_text("precious")
    (outside / "file.txt").write_text("precious")
    run = tmp_path / "runs" / "job-1"
    (run / "logs").mkdir(parents=True)
    (run / "logs" / "metrics.jsonl").write_text("{}")
    (run / "linked-dir").symlink_to(outside / "keep", target_is_directory=True)
    (run / "logs" / "linked-file").symlink_to(outside / "file.txt")
    remove_tree(str(run))
    assert not run.exists()
    assert (outside / "keep" / "weights.bin").read_text() == "precious" and (outside / "file.txt").exists()

    link = tmp_path / "runs" / "job-2"
    link.symlink_to(outside, target_is_directory=True)  # the run folder itself a link
    remove_tree(str(link))
    assert not link.is_symlink() and (outside / "keep" / "weights.bin").exists() and (outside / "file.txt").exists()
    remove_tree(str(tmp_path / "runs" / "missing"))  # a missing folder is fine


def test_a_locked_database_answers_store_busy_quickly(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite3", clock=FakeClock())
    record, _ = new_record(store)
    other = sqlite3.connect(tmp_path / "jobs.sqlite3", isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # another process (a backup, a shell) holds the lock
    try:
        for call in (lambda: store.get(record.id), store.list, lambda: new_record(store),
                     lambda: store.transition(record.id, "running", expected="queued")):
            start = time.monotonic()
            with pytest.raises(StoreBusy, match="locked by another process"):
                call()
            assert time.monotonic() - start < 2
    finally:
        other.execute("ROLLBACK")
    assert store.get(record.id).status == "queued", "the store works again once the lock is gone"


@pytest.mark.parametrize("content", [b"this is not a database" * 100, b"SQLite format 3\x00" + b"\x00" * 84 + b"\xff" * 4000])
def test_a_corrupt_database_stops_with_how_to_recover(tmp_path, content):
    path = tmp_path / "jobs.sqlite3"
    path.write_bytes(content)
    with pytest.raises(CorruptStore, match=r"is corrupt .* move it aside \(mv .*jobs.sqlite3 .*\.corrupt\)"):
        JobStore(path, clock=FakeClock())


def test_a_database_with_a_damaged_page_stops_with_how_to_recover(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    store = JobStore(path, clock=FakeClock())
    for _ in range(200):
        new_record(store)
    store.close()
    data = bytearray(path.read_bytes())
    page = 4096
    data[2 * page:3 * page] = b"\xa5" * page  # a table page overwritten
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptStore, match="move it aside"):
        JobStore(path, clock=FakeClock())
