"""The job-control API: a Ray Serve application that drives Ray Jobs (train, tune, evaluate, prepare_dataset).

    serve run serve.jobs:build_app state_dir=/state storage=/runs      # or in serve/config.yaml under /api

Mounted at `/api`, it serves `GET /api/healthz`, presets and listings, and `/api/jobs`
(create, validate, list, get, logs, metrics, trials, pause, resume, delete); OpenAPI at `/api/docs`. Every route but
`/healthz` needs `Authorization: Bearer <token>`; the token is read inside the replica from the
file `api_token_file` or the environment variable `api_token_env` (default DEEPSYNTH_API_TOKEN),
so it never appears in the Serve config or the Ray dashboard. The replica reaches Ray Jobs with
Ray's own token (RAY_AUTH_TOKEN or Ray's token file) through a `JobSubmissionClient`. The HTTP
layer is thin: it checks the token, parses pydantic schemas and calls `JobService`. Every answer
is JSON: a body over `max_body_bytes` is a 413 before it is read, a client that keeps sending
wrong tokens gets 429s, a locked job database a 503, and anything unexpected a 500 without detail
(the traceback goes to the replica's log).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, File, Form, Header, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve import Application
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from deepsynth.auth import bearer_accepted, read_token, route_path, scope_path
from deepsynth.data.prepared import NAME_PATTERN, list_prepared
from deepsynth.data.uploads import UploadError, read_upload, upload_format
from deepsynth.evaluation.benchmarks import BENCHMARKS
from deepsynth.jobs.progress import list_runs
from deepsynth.jobs.ratelimit import RateLimiter
from deepsynth.jobs.secrets import scrub, secret_values
from deepsynth.jobs.service import Conflict, JobService, RateLimited, RayUnavailable
from deepsynth.jobs.specs import JobRequest, JobSettings, SpecError, list_presets, training_sizes
from deepsynth.jobs.store import STATUSES, InvalidTransition, JobNotFound, JobStore, StoreBusy
from deepsynth.logs import SERVE_LOGGER_NAME, configure_serve_logging, serve_logging_config

PROJECT_DIR = Path(__file__).resolve().parent.parent
UNAUTHORIZED = ("Missing or invalid token: send 'Authorization: Bearer <DEEPSYNTH_API_TOKEN>' as a header "
                "(never in the URL).")
# GET /jobs/{id}/metrics: reports per page by default, and at most.
METRICS_LIMIT = 1000
MAX_METRICS_LIMIT = 10_000
# POST /datasets: the largest request (file and form) and the most documents, by default.
UPLOAD_BYTES = 64 * 1_048_576
UPLOAD_ROWS = 100_000
HTTP_ERRORS = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}

# Serve's own logger: its handlers write the replica's log file, and configure_serve_logging scrubs them.
logger = logging.getLogger(SERVE_LOGGER_NAME)


class AppArgs(BaseModel):
    """Arguments of `build_app` (`serve run serve.jobs:build_app key=value`, or `args:` in serve/config.yaml)."""

    model_config = ConfigDict(extra="forbid")

    state_dir: str | None = None
    """Folder of the job database; default $DEEPSYNTH_STATE_DIR, else .deepsynth/state."""
    storage: str | None = None
    """The root under which jobs write `runs/`, `datasets/` and `evals/` (a shared path, or s3://, gs:// for
    train, tune and prepare_dataset jobs only); default $DEEPSYNTH_STORAGE, else .deepsynth."""
    api_token_file: str | None = None
    """A file holding the API token; read in the replica. Takes precedence over api_token_env."""
    api_token_env: str = "DEEPSYNTH_API_TOKEN"
    """The environment variable holding the API token in the replica's environment."""
    ray_dashboard_url: str | None = None
    """Ray's Jobs API address (the dashboard, http://<head>:8265); default the GCS address of the cluster the
    replica runs in. Ray's JobSubmissionClient itself replaces either with $RAY_API_SERVER_ADDRESS, else
    $RAY_ADDRESS, when one is set in the replica's environment."""
    model_roots: list[str] = Field(default_factory=list)
    """Local folders clients may name as a job's model; default none (Hub ids only)."""
    max_workers: int = Field(8, ge=1)
    allow_remote_code: bool = False
    rate_per_minute: float = Field(10.0, gt=0)
    """Jobs a client may create per minute, on average."""
    rate_burst: int = Field(5, ge=1)
    """Jobs a client may create at once before the rate applies."""
    failed_logins_per_minute: int = Field(10, ge=1)
    """Wrong or missing tokens one client host may send per minute (and at once) before every request from it
    is a 429 with Retry-After, until the bucket refills."""
    max_body_bytes: int = Field(1_048_576, ge=1024)
    """Largest request body; a larger one (declared in Content-Length or streamed) is a 413, refused before it is
    read. Job requests are a few KB."""
    max_upload_bytes: int = Field(UPLOAD_BYTES, ge=1024)
    """Largest body of `POST /datasets` (the whole multipart request: the file and the form fields), refused like
    max_body_bytes; the other routes keep max_body_bytes."""
    max_upload_rows: int = Field(UPLOAD_ROWS, ge=2)
    """Most documents one uploaded file may hold; more is a 422."""
    project_dir: str | None = None
    """Where entrypoints run (holds ray_jobs/); default the folder this package is in."""
    python: str | None = None
    """Interpreter of the entrypoints; default the replica's own."""
    log_format: Literal["text", "json"] = "text"
    """The replica's log file as text, or one JSON object per line (docs/observability.md)."""


class ErrorBody(BaseModel):
    type: str
    message: str
    field: str | None = Field(None, description="the failing field's path in the request (`preset`, "
                              "`overrides.lr`, a query parameter's name), when it is known; absent otherwise")


class ErrorResponse(BaseModel):
    error: ErrorBody


class Progress(BaseModel):
    step: int
    total: int | None
    fraction: float | None


class CheckpointView(BaseModel):
    step: int
    path: str
    metrics: dict[str, Any]
    created: str | None = None


class JobView(BaseModel):
    id: str
    type: str
    preset: str
    overrides: dict[str, Any]
    status: str = Field(description=f"one of {list(STATUSES)}")
    run_name: str
    created: float
    updated: float
    error: str | None
    attempts: int
    ray_job_id: str | None
    progress: Progress | None
    latest_metrics: dict[str, Any] | None
    checkpoints: list[CheckpointView]
    resume_step: int | None = Field(description="the checkpoint step a resume continues from (train jobs); "
                                    "None starts from scratch")


class MetricsPage(BaseModel):
    job_id: str
    trial: str | None = Field(description="the sweep trial these reports are of; None for a train job")
    records: list[dict[str, Any]] = Field(description="metrics.jsonl reports after `since`, in file order: "
                                          "{step, loss, val_loss, lr, samples_per_s, data_wait_share, "
                                          "peak_memory_mb, ...}; step 0 holds the initial val_loss")
    next_since: int = Field(description="the last step returned (or `since`): pass it as `since` for the next page")
    more: bool = Field(description="whether reports after `next_since` were left for the next page")


class TrialView(BaseModel):
    run: str
    rank: int
    alpha: int
    lr: float
    dropout: float
    targets: str | list[str] | None
    status: str = Field(description="pending, running, done, stopped early (ASHA), stopped or error")
    step: int | None
    val_loss: float | None = Field(description="a done trial's best val loss, else its latest")
    rouge_l: float | None
    trainable_parameters: int | None
    samples_per_s: float | None
    peak_memory_mb: float | None
    checkpoint: str | None
    best: bool


class TrialsView(BaseModel):
    job_id: str
    status: str
    trials: list[TrialView]
    best: str | None = Field(description="the run of the done trial with the lowest val loss")


class UploadResult(BaseModel):
    dataset: str = Field(description="prepared:<name>: the dataset train jobs name once the job has succeeded")
    job: JobView = Field(description="the prepare_dataset job rendering it")
    rows: dict[str, int] = Field(description="documents per split: train and validation")


class UploadView(BaseModel):
    name: str
    dataset: str
    status: str = Field(description="preparing, ready or failed")
    job_id: str | None = None
    job_status: str | None = Field(description="the prepare job's status; None once its record is deleted")
    filename: str
    format: str
    text_field: str
    summary_field: str
    rows: dict[str, int]
    created: float


def parse_overrides(text: str) -> dict:
    """The `overrides` form field of an upload: a JSON object, else UploadError (a 422 naming the field)."""
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise UploadError(422, "invalid_request", "overrides must be a JSON object of prepare_dataset settings, "
                          'e.g. {"max_pages": 4}.', field="overrides")
    return value


class DeleteResult(BaseModel):
    id: str
    deleted: bool
    stopped: bool
    purged: list[str]


class ValidationResult(BaseModel):
    valid: bool
    type: str
    preset: str
    config: dict[str, Any] = Field(description="the config the job would run: the preset with the overrides and "
                                   "the server's settings applied; `{job_id}` stands for the id a created job gets")
    command: str = Field(description="the entrypoint the server would submit to Ray Jobs, `{job_id}` as in config")
    total_steps: int | None = Field(description="the optimizer steps of a train job (its progress denominator)")


def error(status: int, kind: str, message: str, headers: dict[str, str] | None = None,
          field: str | None = None) -> JSONResponse:
    body = {"type": kind, "message": message, **({"field": field} if field else {})}
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def request_field(loc: tuple) -> str | None:
    """A pydantic error location as a field path: ("body", "overrides", "lr") -> "overrides.lr", ("query",
    "since") -> "since"; None for the body as a whole or a position in unparsable JSON."""
    if len(loc) < 2 or not all(isinstance(part, str) for part in loc[1:]):
        return None
    return ".".join(loc[1:]) if loc[0] == "body" else loc[-1]


class PayloadTooLarge(StarletteHTTPException):
    """Raised from `receive` by `BodyLimit`; FastAPI re-raises HTTP exceptions from body parsing as they are."""

    def __init__(self, limit: int):
        super().__init__(413, f"The request body is larger than this server's limit of {limit:,} bytes.")


class BodyLimit:
    """ASGI middleware: a body over `max_bytes` (or its route's limit in `route_limits`, by path inside the app) is
    a 413. One whose Content-Length says so is answered before a byte of it is read, so a client that declares
    10 GB and sends nothing is not waited for; a streamed one (chunked) fails as soon as it passes the limit."""

    def __init__(self, app: ASGIApp, max_bytes: int, route_limits: dict[str, int] | None = None):
        self.app, self.max_bytes, self.route_limits = app, max_bytes, route_limits or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.route_limits.get(scope_path(scope), self.max_bytes)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            response = error(413, "payload_too_large", PayloadTooLarge(limit).detail, {"Connection": "close"})
            return await response(scope, receive, send)
        seen = 0

        async def counted() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise PayloadTooLarge(limit)
            return message

        await self.app(scope, counted, send)


def read_api_token(args: AppArgs, environ: dict[str, str]) -> str:
    return read_token(args.api_token_file, args.api_token_env, environ, "The job API")


def read_ray_token(environ: dict[str, str]) -> str | None:
    """Ray's auth token as Ray itself finds it: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, then ~/.ray/auth_token."""
    if environ.get("RAY_AUTH_TOKEN"):
        return environ["RAY_AUTH_TOKEN"].strip()
    path = Path(environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    return path.read_text().strip() if path.is_file() else None


def create_api(service: JobService, api_token: str, secrets: frozenset[str], *, failed_logins: RateLimiter,
               max_body_bytes: int, max_upload_bytes: int = UPLOAD_BYTES, max_upload_rows: int = UPLOAD_ROWS) -> FastAPI:
    """The FastAPI app over a JobService; auth is a middleware, so a bad token costs no handler work.

    `failed_logins` has one bucket per client host, taken from by each wrong token; an empty bucket makes every
    request from that host a 429, a right token included, so guessing is no faster than the bucket refills.
    """
    app = FastAPI(title="DeepSynth job API", version="1",
                  description="Create, watch, pause, resume and delete training, sweep, evaluation and dataset jobs.",
                  responses={401: {"model": ErrorResponse}, 413: {"model": ErrorResponse},
                             422: {"model": ErrorResponse}, 429: {"model": ErrorResponse},
                             500: {"model": ErrorResponse}, 503: {"model": ErrorResponse}})
    # Outside auth, so an oversized body is refused before anything else looks at the request.
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes, route_limits={"/datasets": max_upload_bytes})

    @app.middleware("http")
    async def authenticate(request: Request, call_next):
        if route_path(request) == "/healthz":
            return await call_next(request)
        host = request.client.host if request.client else "unknown"
        wait = failed_logins.wait(host)
        if wait:
            return error(429, "too_many_failed_logins", f"Too many requests with a wrong token from this client; "
                         f"retry in {wait:.0f} s.", {"Retry-After": str(int(wait))})
        if not bearer_accepted(request, api_token):
            failed_logins.acquire(host)
            return error(401, "unauthorized", UNAUTHORIZED, {"WWW-Authenticate": "Bearer"})
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        # Location and reason only: pydantic's messages can echo the input, which may hold a secret.
        errors = exc.errors()
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors)
        field = request_field(tuple(errors[0]["loc"])) if errors else None
        return error(422, "invalid_request", scrub(problems, secrets), field=field and scrub(field, secrets))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        # Starlette's own texts ("Not Found"), never the path: a URL may carry anything, a pasted token too.
        return error(exc.status_code, HTTP_ERRORS.get(exc.status_code, "invalid_request"), str(exc.detail),
                     dict(exc.headers or {}))

    @app.exception_handler(SpecError)
    async def bad_spec(request: Request, exc: SpecError):
        return error(422, "invalid_job", scrub(str(exc), secrets), field=exc.field and scrub(exc.field, secrets))

    @app.exception_handler(UploadError)
    async def bad_upload(request: Request, exc: UploadError):
        return error(exc.status, exc.kind, scrub(str(exc), secrets), field=exc.field)

    @app.exception_handler(JobNotFound)
    async def not_found(request: Request, exc: JobNotFound):
        return error(404, "not_found", str(exc))

    @app.exception_handler(InvalidTransition)
    async def invalid_transition(request: Request, exc: InvalidTransition):
        return error(409, "invalid_transition", str(exc))

    @app.exception_handler(Conflict)
    async def conflict(request: Request, exc: Conflict):
        return error(409, "conflict", str(exc))

    @app.exception_handler(RateLimited)
    async def rate_limited(request: Request, exc: RateLimited):
        return error(429, "rate_limited", str(exc), {"Retry-After": str(int(exc.retry_after))})

    @app.exception_handler(RayUnavailable)
    async def ray_unavailable(request: Request, exc: RayUnavailable):
        return error(503, "ray_unavailable", scrub(str(exc), secrets), {"Retry-After": "5"})

    @app.exception_handler(StoreBusy)
    async def store_busy(request: Request, exc: StoreBusy):
        return error(503, "store_busy", str(exc), {"Retry-After": "1"})

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        # Our bug: the traceback goes to the replica's log (scrubbed of secrets), the client gets no internals.
        route = getattr(request.scope.get("route"), "path", "an unknown route")
        logger.error("Unhandled error on %s %s", request.method, route, exc_info=exc)
        return error(500, "internal_error", "The server failed on this request; see the replica's log.")

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/training/presets")
    def training_presets() -> list[dict]:
        """Named training (train) and sweep (tune) configs: the YAML files the entry scripts read, with the
        trainable parameters and memory of full, LoRA default, LoRA all and QLoRA for each train preset."""
        settings = service.settings
        return [{**preset, "sizes": training_sizes(preset["config"], settings.project_dir)
                 if preset["type"] == "train" else None} for preset in list_presets(settings.configs_dir)]

    @app.get("/datasets/benchmarks")
    def benchmarks() -> list[dict]:
        """Evaluation presets: dataset, split and published reference scores."""
        return [{"name": name, "dataset": b.dataset, "split": b.split, "reference_model": b.reference_model,
                 "reference_rouge": b.reference_rouge, "source": b.source} for name, b in BENCHMARKS.items()]

    @app.get("/datasets/generated")
    def generated() -> list[dict]:
        """Datasets prepared on the cluster (prepare_dataset jobs); train on one with dataset=prepared:<name>."""
        return list_prepared(service.settings.datasets_root)

    @app.post("/datasets", status_code=202, response_model=UploadResult,
              responses={409: {"model": ErrorResponse}, 413: {"model": ErrorResponse},
                         415: {"model": ErrorResponse}, 422: {"model": ErrorResponse}})
    def upload_dataset(
        file: UploadFile = File(description="the documents: a .jsonl, .csv or .parquet file, one row per document"),
        name: str = Form(pattern=NAME_PATTERN.pattern, description="the dataset's name: train on prepared:<name>"),
        text_field: str = Form("text", min_length=1, max_length=200, description="the column holding the text"),
        summary_field: str = Form("summary", min_length=1, max_length=200,
                                  description="the column holding the reference summary"),
        validation_rows: int | None = Form(None, ge=1, description="rows held out as the validation split "
                                           "(a fixed-seed shuffle); default a tenth of the rows, at least one"),
        overrides: str = Form("{}", max_length=10_000, description="a JSON object of prepare_dataset settings "
                              "(PrepareConfig: model, layout, max_pages, long_documents, limit, ...)"),
    ):
        """Upload a dataset and start the prepare_dataset job that renders it (202): when the job succeeds,
        `prepared:<name>` is a dataset train, tune and evaluate jobs can name. The file is checked strictly first
        (format, columns, non-empty string cells, row limit); what is wrong is a 4xx naming the row or field."""
        settings = parse_overrides(overrides)
        service.check_upload_name(name)  # before the file is read
        rows = read_upload(file.file, file.filename or "", text_field=text_field, summary_field=summary_field,
                           max_rows=max_upload_rows)
        meta = {"filename": Path(file.filename or "").name, "format": upload_format(file.filename or ""),
                "text_field": text_field, "summary_field": summary_field, "created": time.time()}
        result = service.create_upload(name, rows, validation_rows=validation_rows, meta=meta, overrides=settings)
        return UploadResult(dataset=result["dataset"], job=JobView(**result["job"]), rows=result["rows"])

    @app.get("/datasets/uploads", response_model=list[UploadView])
    def uploads():
        """Uploaded datasets with the state of their prepare job: preparing, ready (train on `dataset`) or
        failed (see the job's error and logs)."""
        return service.list_uploads()

    @app.get("/training/checkpoints")
    def checkpoints() -> list[dict]:
        """Every run under the storage with its checkpoints: step, metrics and path."""
        return list_runs(service.settings.runs_root)

    @app.post("/jobs", status_code=201, response_model=JobView,
              responses={200: {"model": JobView, "description": "an Idempotency-Key replay"},
                         409: {"model": ErrorResponse}, 429: {"model": ErrorResponse}})
    def create_job(request: JobRequest, idempotency_key: str | None = Header(None, max_length=200)):
        view, created = service.create(request, idempotency_key)
        return JSONResponse(JobView(**view).model_dump(mode="json"), status_code=201 if created else 200)

    @app.post("/jobs:validate", response_model=ValidationResult)
    def validate_job(request: JobRequest):
        """The same body and checks as POST /jobs, but nothing is recorded or submitted: the resolved config and
        the command the server would run, or the 422 that create would answer. Not rate-limited."""
        return service.validate(request)

    @app.get("/jobs", response_model=list[JobView])
    def list_jobs():
        return service.list()

    @app.get("/jobs/{job_id}", response_model=JobView, responses={404: {"model": ErrorResponse}})
    def get_job(job_id: str):
        """The job as Ray last reported it; while Ray is unreachable, the last known state."""
        return service.get(job_id)

    @app.get("/jobs/{job_id}/logs", response_class=PlainTextResponse, responses={404: {"model": ErrorResponse}})
    def job_logs(job_id: str, tail: int | None = Query(None, ge=1, le=100_000)):
        """The job's output, every attempt (a resume is a new attempt), with secrets redacted."""
        return PlainTextResponse(service.logs(job_id, tail))

    @app.get("/jobs/{job_id}/metrics", response_model=MetricsPage,
             responses={404: {"model": ErrorResponse}, 409: {"model": ErrorResponse}})
    def job_metrics(job_id: str, since: int = Query(-1, ge=-1, le=2**53), limit: int = Query(
                        METRICS_LIMIT, ge=1, le=MAX_METRICS_LIMIT), trial: str | None = Query(None, max_length=300)):
        """The run's metrics log (`logs/metrics.jsonl`): the reports after step `since`, at most `limit`. Poll
        with `since` = the previous `next_since`. A sweep (tune) job's runs are its trials: name one in `trial`."""
        return service.metrics(job_id, since, limit, trial)

    @app.get("/jobs/{job_id}/trials", response_model=TrialsView,
             responses={404: {"model": ErrorResponse}, 409: {"model": ErrorResponse}})
    def job_trials(job_id: str):
        """A sweep (tune) job's trials: rank, alpha, lr, dropout, status, step, val loss, ROUGE-L, the best one."""
        return service.trials(job_id)

    @app.post("/jobs/{job_id}/pause", response_model=JobView, status_code=202,
              responses={404: {"model": ErrorResponse}, 409: {"model": ErrorResponse}})
    def pause_job(job_id: str):
        """Graceful stop: the trainer checkpoints at the next step boundary; the job becomes paused."""
        return service.pause(job_id)

    @app.post("/jobs/{job_id}/resume", response_model=JobView, status_code=202,
              responses={404: {"model": ErrorResponse}, 409: {"model": ErrorResponse}})
    def resume_job(job_id: str):
        """A new Ray job on the same run name and storage path, continuing from the latest checkpoint."""
        return service.resume(job_id)

    @app.delete("/jobs/{job_id}", response_model=DeleteResult,
                responses={404: {"model": ErrorResponse}, 409: {"model": ErrorResponse}})
    def delete_job(job_id: str, purge: bool = False):
        """Stop the job if it runs and remove its record. ?purge=true (a finished or paused job only, else 409)
        also removes its run, dataset or evaluation folder and Ray's records of its attempts."""
        return service.delete(job_id, purge)

    return app


def build_service(args: AppArgs, environ: dict[str, str], client: Any, clock: Callable[[], float] = time.time
                  ) -> tuple[JobService, str, frozenset[str]]:
    """The service, the API token and the secrets to scrub, from the app's args and the replica's environment."""
    api_token = read_api_token(args, environ)
    storage = args.storage or environ.get("DEEPSYNTH_STORAGE") or ".deepsynth"
    storage = storage if "://" in storage else str(Path(storage).resolve())
    state_dir = Path(args.state_dir or environ.get("DEEPSYNTH_STATE_DIR") or ".deepsynth/state").resolve()
    project_dir = Path(args.project_dir).resolve() if args.project_dir else PROJECT_DIR
    settings = JobSettings(storage=storage, configs_dir=project_dir / "ray_jobs" / "configs", project_dir=project_dir,
                           python=args.python or sys.executable, model_roots=tuple(args.model_roots),
                           max_workers=args.max_workers, allow_remote_code=args.allow_remote_code)
    secrets = secret_values(environ, extra=[api_token, read_ray_token(environ)])
    store = JobStore(state_dir / "jobs.sqlite3", clock=clock)
    limiter = RateLimiter(args.rate_per_minute, args.rate_burst, clock=time.monotonic)
    return JobService(store, client, settings, secrets=secrets, limiter=limiter), api_token, secrets


def ray_job_client(dashboard_url: str | None, environ: dict[str, str]):
    import ray
    from ray.job_submission import JobSubmissionClient

    token = read_ray_token(environ)
    # Without a URL, the cluster this replica runs in (found through its GCS), never "the local
    # cluster": a machine may run several, and the Jobs API would then refuse to guess.
    address = dashboard_url or ray.get_runtime_context().gcs_address
    return JobSubmissionClient(address, headers={"Authorization": f"Bearer {token}"} if token else None)


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0})
@serve.ingress()
class JobsAPI:
    """One replica: job records live in one SQLite file, written by one process."""

    def __init__(self, args: dict, client_factory: Callable[[str | None, dict], Any] | None = None):
        parsed = AppArgs(**args)
        environ = dict(os.environ)
        client = (client_factory or ray_job_client)(parsed.ray_dashboard_url, environ)
        self.service, self.api_token, self.secrets = build_service(parsed, environ, client)
        self.failed_logins = RateLimiter(parsed.failed_logins_per_minute, parsed.failed_logins_per_minute,
                                         clock=time.monotonic)
        self.limits = {"max_body_bytes": parsed.max_body_bytes, "max_upload_bytes": parsed.max_upload_bytes,
                       "max_upload_rows": parsed.max_upload_rows}
        log = configure_serve_logging(secrets=self.secrets)
        reconciled = self.service.reconcile()
        if reconciled:
            log.info("Reconciled job records with Ray: %s", reconciled)

    def __serve_build_asgi_app__(self):
        return create_api(self.service, self.api_token, self.secrets, failed_logins=self.failed_logins,
                          **self.limits)


def build_app(args: dict) -> Application:
    """The job API application; `args` are `AppArgs`, checked here so a typo fails at deploy time."""
    parsed = AppArgs(**args)
    return JobsAPI.options(logging_config=serve_logging_config(parsed.log_format)).bind(dict(args))
