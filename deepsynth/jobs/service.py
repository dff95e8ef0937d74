"""The job service: what the job API does, over a job store, a Ray job client and the run folders.

Ray Jobs runs the entrypoints; this service adds what it lacks. It keeps a persistent record of
every job (`JobStore`), turns pause into a graceful stop (Ray's stop sends SIGTERM; the trainer
checkpoints at the next step boundary) and resume into a new Ray job on the same run, and
reconciles its records with Ray: a job Ray no longer knows (its head restarted) becomes `paused`
when its run left a checkpoint to resume from, else `failed`; never silently `running`. Requests
race (two resumes, a read overlapping a pause): every status change is a compare-and-set in the
store, so the loser of a race gets a 409 from an action and the fresh record from a read.

Everything heavy is a parameter: the Ray client (`JobClient`, in production a
`ray.job_submission.JobSubmissionClient`), the store, the rate limiter and the clock. Every text
that leaves the service (logs, Ray's error messages) is scrubbed of known secrets.

    service = JobService(store, client, settings, secrets=..., limiter=RateLimiter(10, 5, time.monotonic))
    service.reconcile()
    view, created = service.create(JobRequest(type="train", preset="cpu_smoke"), idempotency_key=None)
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from dataclasses import dataclass
from typing import Any, Protocol

import pyarrow.fs as pafs

from deepsynth.data.prepared import MANIFEST, PREFIX, filesystem, join
from deepsynth.data.uploads import UPLOAD_PREFIX, list_upload_meta, write_upload, write_upload_meta
from deepsynth.jobs.json_types import map_strings
from deepsynth.jobs.progress import latest_metrics, list_checkpoints, metrics_page, remove_tree, resume_step
from deepsynth.jobs.ratelimit import RateLimiter
from deepsynth.jobs.secrets import scrub
from deepsynth.jobs.specs import JobRequest, JobSettings, JobSpec, SpecError, build_spec, upload_folder
from deepsynth.jobs.sweeps import sweep_trials
from deepsynth.jobs.store import TERMINAL, InvalidTransition, JobNotFound, JobRecord, JobStore, new_job_id

logger = logging.getLogger(__name__)

ACTIVE = ("queued", "running", "pausing")
# Ray's job status -> ours, for a job that was not asked to pause.
RAY_STATUS = {"PENDING": "queued", "RUNNING": "running", "SUCCEEDED": "succeeded", "FAILED": "failed",
              "STOPPED": "stopped"}
RESUMABLE_TYPES = ("train",)
# Purging removes the run folder: only once nothing writes to it any more.
PURGEABLE = TERMINAL | {"paused"}
# The job API has one token, so job creation shares one rate-limit bucket.
RATE_KEY = "api"
# Job types whose runs write a metrics log: a train job's run, and each trial's run of a sweep.
METRIC_TYPES = ("train", "tune")
# A validation builds the job as if it had this id (real ids are "job-" and 12 hex digits, so it is none of
# them); the answer shows JOB_ID_PLACEHOLDER where the created job's id will be.
VALIDATE_ID = "job-validate-placeholder"
JOB_ID_PLACEHOLDER = "{job_id}"


class JobClient(Protocol):
    """The part of `ray.job_submission.JobSubmissionClient` the service uses."""

    def submit_job(self, *, entrypoint: str, submission_id: str, metadata: dict[str, str],
                   entrypoint_num_gpus: float | None) -> str: ...

    def get_job_info(self, job_id: str) -> Any: ...

    def stop_job(self, job_id: str) -> bool: ...

    def get_job_logs(self, job_id: str) -> str: ...

    def delete_job(self, job_id: str) -> bool: ...


class Conflict(RuntimeError):
    """A request that the job's state or type does not allow (a 409)."""


class RateLimited(RuntimeError):
    def __init__(self, retry_after: float):
        super().__init__(f"Too many jobs created; retry in {retry_after:.0f} s.")
        self.retry_after = retry_after


class RayUnavailable(RuntimeError):
    """The Ray cluster did not answer (a 503); the record keeps its last known status."""


@dataclass(frozen=True)
class RayState:
    status: str
    message: str


def is_not_found(err: Exception) -> bool:
    """Whether a JobSubmissionClient error is Ray's 404 (it raises RuntimeError with the HTTP status in the text)."""
    return isinstance(err, RuntimeError) and "status code 404" in str(err)


class JobService:
    def __init__(self, store: JobStore, client: JobClient, settings: JobSettings, *, secrets: frozenset[str],
                 limiter: RateLimiter):
        self.store, self.client, self.settings = store, client, settings
        self.secrets, self.limiter = secrets, limiter
        # Jobs between their move to queued and Ray's answer to the submission: their latest known
        # submission is the previous attempt (stopped), which a concurrent read must not act on.
        self._submitting: set[str] = set()
        self._submitting_lock = threading.Lock()
        # Upload names between their check and their folder's creation (under the same lock).
        self._uploading: set[str] = set()

    # --- Ray, seen through its client ---
    def _ray(self, what: str, call, *args, **kwargs):
        """Call the Ray client; None when Ray does not know the job, RayUnavailable when Ray fails or is down."""
        try:
            return call(*args, **kwargs)
        except (RuntimeError, OSError) as err:  # requests' ConnectionError is an OSError
            if is_not_found(err):
                return None
            if isinstance(err, OSError):
                raise RayUnavailable(f"{what}: the Ray cluster is not reachable ({type(err).__name__}); "
                                     "retry shortly.") from None
            raise RayUnavailable(self._scrub(f"{what}: {err}")) from None

    def _ray_state(self, submission_id: str) -> RayState | None:
        """Ray's status of a submission; None when Ray does not know it (e.g. after a head restart)."""
        info = self._ray("Reading the job from Ray failed", self.client.get_job_info, submission_id)
        if info is None:
            return None
        return RayState(status=str(info.status.value if hasattr(info.status, "value") else info.status),
                        message=info.message or "")

    def _scrub(self, text: str) -> str:
        return scrub(text, self.secrets)

    def _has_checkpoint(self, record: JobRecord) -> bool:
        return record.type in RESUMABLE_TYPES and resume_step(record.run_dir) is not None

    def refresh(self, record: JobRecord) -> JobRecord:
        """Bring an active record up to date with Ray (the reconciliation of one job).

        It acts on the status it read; if another request changed the job meanwhile, the compare-and-set
        fails and the fresh record is returned as it is. Raises only RayUnavailable (and JobNotFound).
        """
        if record.status not in ACTIVE or record.ray_job_id is None or record.id in self._submitting:
            return record
        state = self._ray_state(record.ray_job_id)
        error = None
        if state is None:
            if self._has_checkpoint(record):
                target, error = "paused", ("Ray no longer knows this job (its head restarted?); it left a "
                                           "checkpoint: POST .../resume to continue.")
            else:
                target, error = "failed", ("Ray no longer knows this job (its head restarted?) and it left no "
                                           "checkpoint to resume from.")
        elif record.status == "pausing" and state.status in ("PENDING", "RUNNING"):
            return record
        elif record.status == "pausing" and state.status == "STOPPED":
            target = "paused"
        else:
            target = RAY_STATUS[state.status]
            error = self._scrub(state.message) if target == "failed" else None
        if target == record.status:
            return record
        try:
            return self.store.transition(record.id, target, expected=record.status, error=error)
        except InvalidTransition:
            return self.store.get(record.id)

    def reconcile(self) -> dict[str, str]:
        """Refresh every active record; run once when the app starts. -> {job id: status}"""
        result = {}
        for record in self.store.list():
            if record.status not in ACTIVE:
                continue
            try:
                if not record.submissions:  # the app stopped between record and submit
                    record = self.store.transition(record.id, "failed", expected=record.status, error=(
                        "The API stopped before it submitted this job to Ray; create it again."))
                else:
                    record = self.refresh(record)
            except (InvalidTransition, JobNotFound):
                continue  # another request got there first
            except RayUnavailable as err:
                logger.warning("Could not reconcile %s yet: %s", record.id, err)
                continue
            result[record.id] = record.status
        return result

    # --- views ---
    def view(self, record: JobRecord) -> dict:
        progress, latest, checkpoints, resume_from = None, None, [], None
        if record.type == "train":
            resume_from = resume_step(record.run_dir)
            latest = latest_metrics(record.run_dir)
            checkpoints = list_checkpoints(record.run_dir)
            step = latest["step"] if latest else (checkpoints[-1]["step"] if checkpoints else 0)
            progress = {"step": step, "total": record.total_steps,
                        "fraction": step / record.total_steps if record.total_steps else None}
        return {"id": record.id, "type": record.type, "preset": record.preset, "overrides": record.overrides,
                "status": record.status, "run_name": record.run_name, "created": record.created,
                "updated": record.updated, "error": self._scrub(record.error) if record.error else None,
                "attempts": len(record.submissions), "ray_job_id": record.ray_job_id, "progress": progress,
                "latest_metrics": latest, "checkpoints": checkpoints, "resume_step": resume_from}

    def _read(self, record: JobRecord) -> JobRecord:
        """The record refreshed from Ray, or as last known while Ray is down: reads never fail on Ray."""
        try:
            return self.refresh(record)
        except RayUnavailable:
            return record

    def get(self, job_id: str) -> dict:
        return self.view(self._read(self.store.get(job_id)))

    def list(self) -> list[dict]:
        views = []
        for record in self.store.list():
            try:
                views.append(self.view(self._read(record)))
            except JobNotFound:
                continue  # deleted while we listed
        return views

    def metrics(self, job_id: str, since: int, limit: int, trial: str | None = None) -> dict:
        """The run's metrics reports after step `since`, at most `limit` (a page ends at a step boundary).

        A sweep has one run per trial: `trial` names it (a `run` of `trials`). -> {"job_id", "trial", "records",
        "next_since", "more"}; `next_since` is the last step returned, or `since` when none was.
        """
        record = self.store.get(job_id)
        if record.type not in METRIC_TYPES:
            raise Conflict(f"Job {job_id} is a {record.type} job; only {list(METRIC_TYPES)} jobs write metrics.")
        if record.type == "train":
            if trial is not None:
                raise SpecError("trial is for sweep (tune) jobs; leave it out for a train job.", field="trial")
            run_dir = record.run_dir
        else:
            runs = [t["run_name"] for t in self._planned_trials(record)]
            if trial not in runs:
                raise SpecError(f"A sweep's metrics are per trial: set trial to one of {runs} (GET "
                                f"/api/jobs/{job_id}/trials).", field="trial")
            run_dir = join(self.settings.runs_root, trial)
        records, more = metrics_page(run_dir, since, limit)
        return {"job_id": job_id, "trial": trial, "records": records,
                "next_since": records[-1]["step"] if records else since, "more": more}

    def trials(self, job_id: str) -> dict:
        """A sweep job's trials (`sweep_trials`) and the best one. -> {"job_id", "status", "trials", "best"}"""
        record = self._read(self.store.get(job_id))
        if record.type != "tune":
            raise Conflict(f"Job {job_id} is a {record.type} job; only tune (sweep) jobs have trials.")
        trials = sweep_trials(self.settings.runs_root, job_id, self._planned_trials(record),
                              active=record.status in ACTIVE)
        best = next((t["run"] for t in trials if t["best"]), None)
        return {"job_id": job_id, "status": record.status, "trials": trials, "best": best}

    def _planned_trials(self, record: JobRecord) -> list[dict]:
        """The sweep's grid, rebuilt from its request as create built it."""
        request = JobRequest(type=record.type, preset=record.preset, overrides=record.overrides)
        try:
            return build_spec(request, record.id, self.settings, self.secrets).config["trials"]
        except SpecError as err:
            raise Conflict(f"Job {record.id}'s sweep no longer validates on this server ({err}); its trials "
                           "cannot be listed.") from None

    # --- uploaded datasets ---
    def check_upload_name(self, name: str) -> None:
        """Conflict when `name` is taken: a prepared dataset, an upload, or an upload under way."""
        fs, path = filesystem(join(self.settings.datasets_root, name))
        if name in self._uploading or fs.get_file_info(path).type != pafs.FileType.NotFound:
            raise Conflict(f"A dataset named {name!r} exists already (GET /api/datasets/generated and "
                           "/api/datasets/uploads list them); choose another name.")

    def create_upload(self, name: str, rows: list[tuple[str, str]], *, validation_rows: int | None, meta: dict,
                      overrides: dict) -> dict:
        """Store an upload's rows as `name` and start the prepare_dataset job that renders it to prepared:<name>.

        Nothing stays behind when a step fails (a bad override, the rate limit, Ray unreachable): the folder is
        removed and the error raised. -> {"dataset": "prepared:<name>", "job": the job's view, "rows": {split: n}}
        """
        with self._submitting_lock:
            self.check_upload_name(name)
            self._uploading.add(name)
        folder = upload_folder(self.settings, name)
        try:
            request = JobRequest.model_construct(type="prepare_dataset", preset=UPLOAD_PREFIX + name,
                                                 overrides=overrides)
            build_spec(request, VALIDATE_ID, self.settings, self.secrets)  # its 422 before anything is written
            counts = write_upload(folder, name, rows, validation_rows, meta)
            view, _ = self.create(request, idempotency_key=None)
        except BaseException:
            remove_tree(join(self.settings.datasets_root, name))
            raise
        finally:
            with self._submitting_lock:
                self._uploading.discard(name)
        write_upload_meta(folder, {**meta, "name": name, "rows": counts, "job_id": view["id"]})
        return {"dataset": PREFIX + name, "job": view, "rows": counts}

    def list_uploads(self) -> list[dict]:
        """Every upload with its prepare job's state: status preparing, ready (prepared:<name> can be trained on)
        or failed."""
        uploads = []
        for meta in list_upload_meta(self.settings.datasets_root):
            folder = join(self.settings.datasets_root, meta["name"])
            fs, path = filesystem(folder)
            prepared = fs.get_file_info(join(path, MANIFEST)).type == pafs.FileType.File
            try:
                job_status = self._read(self.store.get(meta.get("job_id", ""))).status
            except JobNotFound:
                job_status = None  # the record was deleted (without purge)
            status = "ready" if prepared else "preparing" if job_status in ACTIVE else "failed"
            uploads.append({**meta, "dataset": PREFIX + meta["name"], "status": status, "job_status": job_status})
        return uploads

    # --- actions ---
    def validate(self, request: JobRequest) -> dict:
        """What `create` would run for `request`, without recording or submitting anything; SpecError as create.

        -> {"valid": True, "type", "preset", "config": the resolved config, "command": the entrypoint}, with
        `{job_id}` where the job's id goes and known secrets scrubbed.
        """
        spec = build_spec(request, VALIDATE_ID, self.settings, self.secrets)

        def shown(text: str) -> str:
            return self._scrub(text.replace(VALIDATE_ID, JOB_ID_PLACEHOLDER))

        return {"valid": True, "type": request.type, "preset": request.preset,
                "config": map_strings(spec.config, shown), "command": shown(spec.entrypoint),
                "total_steps": spec.total_steps}

    def create(self, request: JobRequest, idempotency_key: str | None) -> tuple[dict, bool]:
        """Validate, record and submit a job. -> (view, created); a known idempotency key returns its job."""
        if idempotency_key is not None:
            existing = self.store.get_by_key(idempotency_key)
            if existing is not None:
                return self._replay(existing, request), False
        retry_after = self.limiter.acquire(RATE_KEY)
        if retry_after:
            raise RateLimited(retry_after)
        job_id = new_job_id()
        spec = build_spec(request, job_id, self.settings, self.secrets)
        try:
            record, created = self.store.create(
                job_type=request.type, preset=request.preset, overrides=request.overrides, run_name=spec.run_name,
                run_dir=spec.run_dir, total_steps=spec.total_steps, idempotency_key=idempotency_key, job_id=job_id)
        except sqlite3.IntegrityError:  # a concurrent request with the same key won the insert
            record, created = self.store.get_by_key(idempotency_key), False
            if record is None:  # ... and its submission failed, which removed its record
                raise RayUnavailable("A concurrent request with this Idempotency-Key could not submit its job; "
                                     "retry shortly.") from None
        if not created:
            return self._replay(record, request), False
        with self._submitting_lock:
            self._submitting.add(record.id)
        return self.view(self._submit(record, spec)), True

    def _replay(self, record: JobRecord, request: JobRequest) -> dict:
        if (record.type, record.preset, record.overrides) != (request.type, request.preset, request.overrides):
            raise Conflict(f"Idempotency-Key was already used for job {record.id} with a different request; "
                           "use a new key for a new job.")
        return self.get(record.id)

    def _submit(self, record: JobRecord, spec: JobSpec) -> JobRecord:
        """Submit the next attempt of a queued record (its id is in `_submitting`, which this clears)."""
        submission_id = f"{record.id}-{len(record.submissions) + 1}"
        try:
            # No runtime_env: jobs inherit the cluster's environment, secrets included, and the
            # dashboard shows runtime_env and metadata to anyone who can read it.
            self.client.submit_job(entrypoint=spec.entrypoint, submission_id=submission_id,
                                   metadata={"deepsynth_job_id": record.id, "deepsynth_type": record.type},
                                   entrypoint_num_gpus=spec.num_gpus or None)
        except (RuntimeError, OSError) as err:
            # Nothing runs: a new job leaves no record (a retry with the same Idempotency-Key creates it),
            # a resume goes back to paused, unless another request has moved the job on meanwhile.
            try:
                if record.submissions:
                    self.store.transition(record.id, "paused", expected="queued",
                                          expected_submissions=record.submissions)
                else:
                    self.store.delete(record.id, expected="queued")
            except (InvalidTransition, JobNotFound):
                pass
            raise RayUnavailable(self._scrub(f"Submitting the job to Ray failed, retry shortly: {err}")) from None
        finally:
            with self._submitting_lock:
                self._submitting.discard(record.id)
        return self.store.add_submission(record.id, submission_id)

    def pause(self, job_id: str) -> dict:
        """Ask a train job to checkpoint and stop. Pausing a `pausing` job sends the stop again (a retry)."""
        record = self.refresh(self.store.get(job_id))
        if record.type not in RESUMABLE_TYPES:
            raise Conflict(f"Job {job_id} is a {record.type} job; only {list(RESUMABLE_TYPES)} jobs can pause "
                           "(they checkpoint and resume). DELETE it to stop it.")
        if record.id in self._submitting:
            raise Conflict(f"Job {job_id} is being submitted to Ray; retry the pause in a moment.")
        if record.status != "pausing":
            record = self.store.transition(job_id, "pausing", expected=record.status, action="pause")
        self._ray("Stopping the Ray job failed", self.client.stop_job, record.ray_job_id)
        return self.get(job_id)

    def resume(self, job_id: str) -> dict:
        record = self.refresh(self.store.get(job_id))
        if record.status != "paused":
            raise InvalidTransition(job_id, record.status, "queued", "resume")
        request = JobRequest(type=record.type, preset=record.preset, overrides=record.overrides)
        # The same job id builds the same run name and storage path: the trainer resumes from its latest checkpoint.
        spec = build_spec(request, record.id, self.settings, self.secrets)
        with self._submitting_lock:
            if job_id in self._submitting:  # another resume of it is on its way to Ray
                raise InvalidTransition(job_id, "queued", "queued", "resume")
            # Marked before the move to queued, so no read acts on the previous (stopped) attempt meanwhile.
            self._submitting.add(job_id)
        try:
            record = self.store.transition(job_id, "queued", expected="paused", action="resume")
        except (InvalidTransition, JobNotFound):
            with self._submitting_lock:
                self._submitting.discard(job_id)
            raise
        return self.view(self._submit(record, spec))

    def logs(self, job_id: str, tail: int | None = None) -> str:
        record = self.store.get(job_id)
        parts = []
        for attempt, submission_id in enumerate(record.submissions, start=1):
            text = self._ray("Reading logs from Ray failed", self.client.get_job_logs, submission_id)
            if text is None:
                text = "(Ray no longer has the logs of this attempt.)\n"
            parts.append(f"=== attempt {attempt} ({submission_id}) ===\n{text}")
        text = "".join(parts)
        if tail is not None:
            text = "\n".join(text.splitlines()[-tail:])
        return self._scrub(text)

    def delete(self, job_id: str, purge: bool) -> dict:
        """Stop the job if it runs and remove its record; with `purge` (a finished or paused job only), also its
        folder and Ray's records of its attempts. The record goes only after every Ray call has succeeded."""
        record = self._read(self.store.get(job_id))
        if purge:
            if record.status not in PURGEABLE:
                raise Conflict(f"Job {job_id} is {record.status!r} and may still write to its folder: pause it or "
                               "wait for it to finish, then purge.")
            for submission_id in record.submissions:
                self._ray("Deleting the Ray job failed", self.client.delete_job, submission_id)
            # Only if nothing resumed it meanwhile: a resumed job writes to the folder about to go.
            self.store.delete(job_id, expected=record.status, action="purge")
            remove_tree(record.run_dir)
            return {"id": job_id, "deleted": True, "stopped": False, "purged": [record.run_dir]}
        stopped = record.status in ACTIVE and record.ray_job_id is not None
        if stopped:
            self._ray("Stopping the Ray job failed", self.client.stop_job, record.ray_job_id)
        self.store.delete(job_id)
        return {"id": job_id, "deleted": True, "stopped": stopped, "purged": []}

