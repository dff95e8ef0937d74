"""The job store: one SQLite file of job records, with explicit status transitions and idempotency keys.

A record is what the API knows about a job across restarts of the API app and of the Ray head:
the validated request, the run it trains, every Ray submission it has made (a resume is a new
Ray job on the same run) and its status. Statuses move only along `TRANSITIONS`, and every move
is a compare-and-set from the status the caller saw: if another request moved the job first, the
move raises `InvalidTransition` (a 409) instead of overwriting it. The file lives under
`DEEPSYNTH_STATE_DIR`, which may be a network filesystem (EFS, Filestore), so the database uses a
rollback journal rather than WAL (whose shared memory needs one host). Another process holding the
file's lock (a backup, an operator's `sqlite3` shell) makes a call wait at most `BUSY_TIMEOUT_S`,
then raise `StoreBusy` (a 503 with Retry-After); a file that is not a readable database stops the
store at once with `CorruptStore`, which says how to recover.

    store = JobStore(Path(state_dir) / "jobs.sqlite3", clock=time.time)
    record, created = store.create(job_type="train", preset="cpu_smoke", overrides={...}, run_name=..., ...)
    store.transition(record.id, "running", expected="queued")
"""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

STATUSES = ("queued", "running", "pausing", "paused", "succeeded", "failed", "stopped")
TERMINAL = frozenset({"succeeded", "failed", "stopped"})
# How long a call waits for another process's lock before it answers StoreBusy: short, so that a request
# answers 503 well within a client's timeout instead of stalling.
BUSY_TIMEOUT_S = 0.5

# Allowed moves. `paused` is reached from running/queued too: reconciliation after a head
# restart finds a run that Ray forgot but that left a checkpoint.
TRANSITIONS: dict[str, frozenset[str]] = {
    "queued": frozenset({"running", "pausing", "paused", "succeeded", "failed", "stopped"}),
    "running": frozenset({"pausing", "paused", "succeeded", "failed", "stopped"}),
    "pausing": frozenset({"paused", "succeeded", "failed", "stopped"}),
    "paused": frozenset({"queued"}),
    "succeeded": frozenset(),
    "failed": frozenset(),
    "stopped": frozenset(),
}


class JobNotFound(LookupError):
    def __init__(self, job_id: str):
        # The id is not repeated: it comes from the URL, which may carry anything (a pasted token).
        super().__init__("No job with this id; list jobs with GET /api/jobs.")
        self.job_id = job_id


class StoreBusy(RuntimeError):
    """Another process holds the database's lock (a 503: retry shortly)."""


class CorruptStore(RuntimeError):
    """The database file is not a readable SQLite database; the message says how to recover."""


class InvalidTransition(RuntimeError):
    def __init__(self, job_id: str, current: str, target: str, action: str, allowed: list[str] | None = None):
        if allowed is None:
            allowed = sorted(s for s, targets in TRANSITIONS.items() if target in targets)
        super().__init__(
            f"Cannot {action} job {job_id!r}: it is {current!r}; {action} needs a job that is one of {allowed}."
        )
        self.current, self.target = current, target


@dataclass
class JobRecord:
    id: str
    type: str
    preset: str
    overrides: dict
    run_name: str
    run_dir: str
    """Where the run's folder (checkpoints, logs/metrics.jsonl) or the job's output goes."""
    total_steps: int | None
    status: str
    created: float
    updated: float
    submissions: list[str] = field(default_factory=list)
    """Ray job submission ids, oldest first; the last one is the current attempt."""
    error: str | None = None
    idempotency_key: str | None = None

    @property
    def ray_job_id(self) -> str | None:
        return self.submissions[-1] if self.submissions else None


_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    preset TEXT NOT NULL,
    overrides TEXT NOT NULL,
    run_name TEXT NOT NULL,
    run_dir TEXT NOT NULL,
    total_steps INTEGER,
    status TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    submissions TEXT NOT NULL,
    error TEXT,
    idempotency_key TEXT UNIQUE
)
"""


class JobStore:
    def __init__(self, path: str | Path, clock: Callable[[], float]):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.clock = clock
        self._lock = threading.Lock()
        # One connection per store; the HTTP layer's worker threads share it under the lock.
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=BUSY_TIMEOUT_S)
        try:
            # WAL's shared-memory index does not work across hosts on a network filesystem; DELETE does.
            self._db.execute("PRAGMA journal_mode=DELETE")
            problems = [row[0] for row in self._db.execute("PRAGMA quick_check")]
            self._db.execute(_SCHEMA)
        except sqlite3.OperationalError as err:
            if not _is_busy(err):
                raise
            raise StoreBusy(f"The job database {self.path} is locked by another process; retry shortly.") from None
        except sqlite3.DatabaseError as err:
            problems = [str(err)]
        if problems != ["ok"]:
            self._db.close()
            raise CorruptStore(
                f"The job database {self.path} is corrupt ({'; '.join(problems[:3])}). To recover, move it aside "
                f"(mv {self.path} {self.path}.corrupt) and restart the app: it starts with an empty database. The "
                "runs, checkpoints and metrics stay under <storage>/runs (GET /api/training/checkpoints lists them "
                "and evaluate jobs can use them), and Ray Jobs still lists the jobs it ran (ray job list).")

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """The connection for one thread at a time; another process's lock past the busy timeout is StoreBusy."""
        with self._lock:
            try:
                yield
            except sqlite3.OperationalError as err:
                if not _is_busy(err):
                    raise
                raise StoreBusy("The job database is locked by another process; retry shortly.") from None

    def create(self, *, job_type: str, preset: str, overrides: dict, run_name: str, run_dir: str,
               total_steps: int | None, idempotency_key: str | None, job_id: str | None = None) -> tuple[JobRecord, bool]:
        """Insert a queued record; with a known idempotency key return the existing record instead. -> (record, created)"""
        now = self.clock()
        record = JobRecord(id=job_id or new_job_id(), type=job_type, preset=preset, overrides=overrides,
                           run_name=run_name, run_dir=run_dir, total_steps=total_steps, status="queued",
                           created=now, updated=now, idempotency_key=idempotency_key)
        with self._locked():
            if idempotency_key is not None:
                existing = self._db.execute("SELECT * FROM jobs WHERE idempotency_key = ?", (idempotency_key,)).fetchone()
                if existing:
                    return _row_to_record(existing), False
            self._db.execute(
                "INSERT INTO jobs VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (record.id, record.type, record.preset, json.dumps(record.overrides), record.run_name, record.run_dir,
                 record.total_steps, record.status, record.created, record.updated, "[]", None, idempotency_key),
            )
        return record, True

    def get(self, job_id: str) -> JobRecord:
        with self._locked():
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFound(job_id)
        return _row_to_record(row)

    def list(self) -> list[JobRecord]:
        with self._locked():
            rows = self._db.execute("SELECT * FROM jobs ORDER BY created DESC").fetchall()
        return [_row_to_record(row) for row in rows]

    def get_by_key(self, idempotency_key: str) -> JobRecord | None:
        """The job created with this Idempotency-Key (the UNIQUE column is indexed), or None."""
        with self._locked():
            row = self._db.execute("SELECT * FROM jobs WHERE idempotency_key = ?", (idempotency_key,)).fetchone()
        return _row_to_record(row) if row else None

    def transition(self, job_id: str, target: str, *, expected: str, action: str | None = None,
                   error: str | None = None, expected_submissions: list[str] | None = None) -> JobRecord:
        """Move a job from `expected` to `target`, atomically; raise InvalidTransition if it is no longer
        `expected` (another request moved it), or `TRANSITIONS` does not allow the move.

        `expected_submissions` also requires the job's submissions to be exactly these (a rollback of a
        submission that failed must not undo a later one). Moving to queued or running clears `error`;
        other moves set it when given and keep it otherwise.
        """
        if target not in STATUSES:
            raise ValueError(f"Unknown status {target!r}; statuses are {list(STATUSES)}.")
        action = action or f"move to {target}"
        if target not in TRANSITIONS[expected]:
            raise InvalidTransition(job_id, expected, target, action)
        clear = target in ("queued", "running")
        query = ("UPDATE jobs SET status = ?, error = CASE WHEN ? THEN NULL ELSE COALESCE(?, error) END, updated = ? "
                 "WHERE id = ? AND status = ?")
        params: tuple = (target, clear, error, self.clock(), job_id, expected)
        if expected_submissions is not None:
            query += " AND submissions = ?"
            params += (json.dumps(expected_submissions),)
        with self._locked():
            changed = self._db.execute(query, params).rowcount
        if not changed:
            raise InvalidTransition(job_id, self.get(job_id).status, target, action, allowed=[expected])
        return self.get(job_id)

    def add_submission(self, job_id: str, submission_id: str) -> JobRecord:
        with self._locked():
            row = self._db.execute("SELECT submissions FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise JobNotFound(job_id)
            submissions = [*json.loads(row[0]), submission_id]
            self._db.execute("UPDATE jobs SET submissions = ?, updated = ? WHERE id = ?",
                             (json.dumps(submissions), self.clock(), job_id))
        return self.get(job_id)

    def delete(self, job_id: str, *, expected: str | None = None, action: str = "delete") -> None:
        """Remove a record; with `expected`, only if the job still has that status (else InvalidTransition)."""
        query, params = "DELETE FROM jobs WHERE id = ?", (job_id,)
        if expected is not None:
            query, params = query + " AND status = ?", (job_id, expected)
        with self._locked():
            deleted = self._db.execute(query, params).rowcount
        if not deleted:
            raise InvalidTransition(job_id, self.get(job_id).status, "deleted", action, allowed=[expected])


def _is_busy(err: sqlite3.OperationalError) -> bool:
    return "database is locked" in str(err) or "database is busy" in str(err)


def new_job_id() -> str:
    return "job-" + uuid.uuid4().hex[:12]


def _row_to_record(row: tuple) -> JobRecord:
    (job_id, job_type, preset, overrides, run_name, run_dir, total_steps, status, created, updated, submissions,
     error, key) = row
    return JobRecord(id=job_id, type=job_type, preset=preset, overrides=json.loads(overrides), run_name=run_name,
                     run_dir=run_dir, total_steps=total_steps, status=status, created=created, updated=updated,
                     submissions=json.loads(submissions), error=error, idempotency_key=key)
