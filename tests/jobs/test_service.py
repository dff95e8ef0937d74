"""`JobService` on a real SQLite store with a small in-memory stand-in for Ray's job client: reconciliation,
racing requests (two resumes, a read overlapping a pause), Ray being unreachable, and the purge rule.

The stand-in answers as `JobSubmissionClient` does: RuntimeError with "status code 404" for an unknown job,
a 400 for a submission id it already has, requests' ConnectionError when the cluster is down. Races are
played deterministically: the stand-in runs the competing request while it handles a submission.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from deepsynth.jobs.ratelimit import RateLimiter
from deepsynth.jobs.service import Conflict, JobService, RayUnavailable
from deepsynth.jobs.specs import JobRequest, JobSettings
from deepsynth.jobs.store import InvalidTransition, JobNotFound, JobStore

PROJECT = Path(__file__).resolve().parents[2]
RAY_TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


@dataclass
class Info:
    status: str
    message: str = ""


class FakeRay:
    """The JobSubmissionClient methods JobService calls, over a dict of submissions."""

    def __init__(self):
        self.jobs: dict[str, dict] = {}
        self.down: bool | set[str] = False
        """True: the cluster is unreachable; a set: these methods fail to connect."""
        self.on_submit = None  # a competing request, run once while a submission is being handled
        self.stops: list[str] = []

    def _reachable(self, method: str) -> None:
        if self.down is True or (self.down and method in self.down):
            raise requests.ConnectionError("Connection refused")

    def _job(self, job_id: str) -> dict:
        if job_id not in self.jobs:
            raise RuntimeError(f"Request failed with status code 404: Job {job_id} does not exist.")
        return self.jobs[job_id]

    def submit_job(self, *, entrypoint: str, submission_id: str, metadata: dict[str, str],
                   entrypoint_num_gpus: float | None = None) -> str:
        self._reachable("submit_job")
        hook, self.on_submit = self.on_submit, None
        if hook:
            hook(submission_id)
        if submission_id in self.jobs:
            raise RuntimeError(f"Request failed with status code 400: Job with submission_id {submission_id} "
                               "already exists.")
        self.jobs[submission_id] = {"status": "PENDING", "entrypoint": entrypoint, "metadata": metadata,
                                    "num_gpus": entrypoint_num_gpus}
        return submission_id

    def get_job_info(self, job_id: str) -> Info:
        self._reachable("get_job_info")
        return Info(self._job(job_id)["status"])

    def stop_job(self, job_id: str) -> bool:
        self._reachable("stop_job")
        self._job(job_id)["status"] = "STOPPED"
        self.stops.append(job_id)
        return True

    def delete_job(self, job_id: str) -> bool:
        self._reachable("delete_job")
        if self._job(job_id)["status"] not in RAY_TERMINAL:
            raise RuntimeError(f"Request failed with status code 400: job {job_id} is not in a terminal state.")
        del self.jobs[job_id]
        return True

    def get_job_logs(self, job_id: str) -> str:
        self._reachable("get_job_logs")
        self._job(job_id)
        return f"output of {job_id}\n"


@pytest.fixture
def ray_jobs():
    return FakeRay()


@pytest.fixture
def service(tmp_path, ray_jobs):
    settings = JobSettings(storage=str(tmp_path / "storage"), configs_dir=PROJECT / "ray_jobs" / "configs",
                           project_dir=PROJECT, python="/usr/bin/python3")
    store = JobStore(tmp_path / "state" / "jobs.sqlite3", clock=lambda: 1000.0)
    yield JobService(store, ray_jobs, settings, secrets=frozenset(), limiter=RateLimiter(60, 100, lambda: 0.0))
    store.close()


def train_job(service: JobService, ray_jobs: FakeRay, status: str = "RUNNING") -> dict:
    view, created = service.create(JobRequest(type="train", preset="cpu_smoke", overrides={"max_steps": 8}), None)
    assert created and view["ray_job_id"] == f"{view['id']}-1"
    ray_jobs.jobs[view["ray_job_id"]]["status"] = status
    return view


def paused_job(service: JobService, ray_jobs: FakeRay) -> str:
    job_id = train_job(service, ray_jobs)["id"]
    assert service.pause(job_id)["status"] == "paused"
    return job_id


def checkpoint(service: JobService, job_id: str, step: int) -> None:
    """What Ray Train leaves in a run folder once it has registered a checkpoint."""
    run = Path(service.store.get(job_id).run_dir)
    run.mkdir(parents=True, exist_ok=True)
    (run / "checkpoint_manager_snapshot.json").write_text(json.dumps(
        {"latest_checkpoint_result": {"checkpoint_dir_name": f"step-{step:06d}", "metrics": {}}}))


def test_reconcile_after_a_head_restart(service, ray_jobs):
    with_checkpoint = train_job(service, ray_jobs)["id"]
    checkpoint(service, with_checkpoint, 4)
    without = train_job(service, ray_jobs)["id"]
    known = train_job(service, ray_jobs, status="SUCCEEDED")["id"]
    never_submitted, _ = service.store.create(job_type="train", preset="cpu_smoke", overrides={}, run_name="x",
                                              run_dir="/nowhere/x", total_steps=8, idempotency_key=None)
    ray_jobs.jobs = {k: v for k, v in ray_jobs.jobs.items() if k.startswith(known)}  # the head forgot the rest

    assert service.reconcile() == {with_checkpoint: "paused", without: "failed", known: "succeeded",
                                   never_submitted.id: "failed"}
    paused = service.get(with_checkpoint)
    assert paused["resume_step"] == 4 and "resume to continue" in paused["error"]
    assert "no checkpoint" in service.get(without)["error"]

    resumed = service.resume(with_checkpoint)
    assert (resumed["status"], resumed["attempts"], resumed["error"]) == ("queued", 2, None), "a new attempt clears it"
    assert service.reconcile() == {with_checkpoint: "queued"}, "Ray knows the new attempt (PENDING)"


def test_two_resumes_start_one_attempt(service, ray_jobs):
    job_id = paused_job(service, ray_jobs)
    seen = {}

    def competing(submission_id):
        # Requests that arrive while the first resume waits for Ray.
        with pytest.raises(InvalidTransition, match="Cannot resume"):
            service.resume(job_id)
        seen["get"] = service.get(job_id)["status"]
        with pytest.raises(Conflict, match="being submitted"):
            service.pause(job_id)

    ray_jobs.on_submit = competing
    assert service.resume(job_id)["status"] == "queued"
    assert seen["get"] == "queued", "a read during the submission does not act on the previous (stopped) attempt"
    record = service.store.get(job_id)
    assert (record.status, record.submissions) == ("queued", [f"{job_id}-1", f"{job_id}-2"])
    assert sorted(ray_jobs.jobs) == [f"{job_id}-1", f"{job_id}-2"]
    with pytest.raises(InvalidTransition):
        service.resume(job_id)


def test_a_refused_resume_never_undoes_the_one_that_won(service, ray_jobs, tmp_path):
    """Two API processes on one database: the loser's Ray submission is refused (same submission id); its
    rollback must leave the winner's record alone."""
    job_id = paused_job(service, ray_jobs)
    other = JobStore(tmp_path / "state" / "jobs.sqlite3", clock=lambda: 2000.0)
    # The other process, between this one's move to queued and Ray's refusal, submitted and recorded attempt 2.
    ray_jobs.on_submit = lambda submission_id: (ray_jobs.jobs.update({submission_id: {"status": "RUNNING"}}),
                                                other.add_submission(job_id, submission_id))
    with pytest.raises(RayUnavailable, match="already exists"):
        service.resume(job_id)
    record = service.store.get(job_id)
    assert (record.status, record.submissions) == ("queued", [f"{job_id}-1", f"{job_id}-2"]), "not rolled back"
    assert service.get(job_id)["status"] == "running"
    other.close()

    # A submission that fails with nothing else going on does roll back: the job stays resumable.
    paused = paused_job(service, ray_jobs)
    ray_jobs.down = True
    with pytest.raises(RayUnavailable, match="retry"):
        service.resume(paused)
    ray_jobs.down = False
    assert service.get(paused)["status"] == "paused" and service.resume(paused)["attempts"] == 2


def test_a_read_overlapping_a_pause_neither_fails_nor_overwrites_it(service, ray_jobs):
    job_id = train_job(service, ray_jobs)["id"]
    stale = service.store.get(job_id)  # a GET read the record ...
    assert service.pause(job_id)["status"] == "paused"  # ... a pause went through ...
    refreshed = service.refresh(stale)  # ... then the GET saw Ray's STOPPED with its stale `running`
    assert refreshed.status == "paused", "not the terminal `stopped`"
    assert service.resume(job_id)["status"] == "queued"

    ray_jobs.down = True
    last = service.get(job_id)
    assert last["status"] == "queued" and [j["status"] for j in service.list()] == ["queued"], "last known state"
    with pytest.raises(RayUnavailable):
        service.logs(job_id)


def test_stop_failures_are_503_and_keep_the_record(service, ray_jobs):
    job_id = train_job(service, ray_jobs)["id"]
    ray_jobs.down = {"stop_job"}
    with pytest.raises(RayUnavailable, match="not reachable"):
        service.pause(job_id)
    with pytest.raises(RayUnavailable, match="not reachable"):
        service.delete(job_id, purge=False)
    assert service.store.get(job_id).status == "pausing", "the record survives a failed delete"
    ray_jobs.down = False
    assert service.pause(job_id)["status"] == "paused", "pausing again sends the stop again"
    assert ray_jobs.stops == [f"{job_id}-1"]

    running = train_job(service, ray_jobs)["id"]
    assert service.delete(running, purge=False) == {"id": running, "deleted": True, "stopped": True, "purged": []}
    assert ray_jobs.jobs[f"{running}-1"]["status"] == "STOPPED"
    with pytest.raises(JobNotFound):
        service.get(running)


def test_purge_only_jobs_that_no_longer_write(service, ray_jobs):
    running = train_job(service, ray_jobs)["id"]
    checkpoint(service, running, 2)
    run_dir = Path(service.store.get(running).run_dir)
    with pytest.raises(Conflict, match="pause it or wait for it to finish, then purge"):
        service.delete(running, purge=True)
    assert run_dir.exists() and service.get(running)["status"] == "running"

    service.pause(running)
    result = service.delete(running, purge=True)
    assert result["purged"] == [str(run_dir)] and not run_dir.exists()
    assert not any(k.startswith(running) for k in ray_jobs.jobs), "Ray's records of the attempts went too"
    with pytest.raises(JobNotFound):
        service.get(running)

    view, _ = service.create(JobRequest(type="prepare_dataset", preset="builtin", overrides={"limit": 5}), None)
    assert view["run_name"] == view["id"], "a dataset job writes, and purges, only a folder named after itself"


def test_evaluate_on_cuda_asks_ray_for_a_gpu(service, ray_jobs):
    view, _ = service.create(JobRequest(type="evaluate", preset="builtin",
                                        overrides={"model": "org/model", "device": "cuda"}), None)
    assert ray_jobs.jobs[view["ray_job_id"]]["num_gpus"] == 1
    view, _ = service.create(JobRequest(type="evaluate", preset="builtin", overrides={"model": "org/model"}), None)
    assert ray_jobs.jobs[view["ray_job_id"]]["num_gpus"] is None
