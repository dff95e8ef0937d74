"""The summarization endpoint as a Ray Serve application: an HTTP ingress and a batched model deployment.

    serve run serve.summarizer:build_app checkpoint=runs/x/step-000500 adapters=legal=runs/y/step-000300
    serve run serve.summarizer:app model=deepseek-community/DeepSeek-OCR-2 device=cuda num_gpus=1
    serve run serve/config.gpu.yaml      # engine=vllm on gpu_serve nodes

`build_app(args)` validates every argument (`deepsynth.serving.config.ServeConfig`) before
anything loads and returns two deployments. `SummarizerIngress` is the FastAPI layer: it reads
the body under the size limit, validates it against the pydantic schemas, renders text or PDFs
to pages and counts their tokens in a worker thread (so a big PDF never stalls its event loop)
and maps every refusal to a JSON `{error, detail}` body with its status. Each request runs under
one deadline (`request_timeout_s`) from its first byte to its summary; rendering runs on a bounded
pool of threads that stop at the next page once the deadline passed or the client left, and a full
pool answers 503 with `Retry-After`. Each render thread draws PDFs in its own PDFium child process,
killed mid-page past `render_timeout_s` (one page can take PDFium minutes). With `api_token_env` or `api_token_file` every route but
`/healthz` and `/readyz` needs `Authorization: Bearer <token>`. Text is rendered with each
checkpoint's (or adapter's) training layout and prompt (its template), and a document whose
visual tokens, prompt and summary cannot fit the decoder's context is refused before rendering. Readiness comes from
Serve's controller, never through the model's request queue, so a busy server stays in its load
balancer. `SummarizerModel` holds the model: concurrent
requests meet in `@serve.batch` and share `generate` calls, LoRA adapters are loaded by name
through `@serve.multiplexed` (an LRU set per replica), and its queue bound turns overload into a
fast 503/429 with `Retry-After`. With `engine=vllm` the model deployment is `VllmSummarizerModel`
instead: vLLM's async engine over the model exported in the original layout
(`deepsynth.serving.vllm_engine`), behind the same ingress. The routes and settings are documented
in docs/serving.md.
"""

import asyncio
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from itertools import groupby
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image
from pydantic import ValidationError
from ray import serve
from ray.exceptions import RayError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, RayServeException
from ray.serve.handle import DeploymentHandle
from ray.util import metrics
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

import deepsynth
from deepsynth.auth import bearer_accepted, read_token
from deepsynth.data.compression import compression_stats
from deepsynth.data.pdf_process import PdfProcess, PdfTimeout
from deepsynth.logs import configure_serve_logging, serve_logging_config
from deepsynth.model.families import ModelFamily
from deepsynth.model.loading import context_length, load_processor
from deepsynth.model.tokens import v1_mode_for
from deepsynth.serving.adapters import AdapterSet, LoadedAdapter
from deepsynth.serving.capacity import Deadline, RenderPool
from deepsynth.serving.config import ServeConfig, load_serve_config
from deepsynth.serving.engine import SummaryJob, SummaryResult, load_served_model, summarize_jobs
from deepsynth.serving.guard import RequestGuard
from deepsynth.serving.inputs import (
    ContextBudget,
    check_content_length,
    file_pages,
    limited_stream,
    page_previews,
    read_body,
    text_pages,
)
from deepsynth.serving.schemas import (
    AdapterInfo,
    ErrorResponse,
    HealthResponse,
    IngressStats,
    ModelsResponse,
    ReplicaStats,
    ServingError,
    StatsResponse,
    SummarizeOptions,
    SummarizeResponse,
    SummarizeTextRequest,
    Timings,
    Usage,
    validation_detail,
)
from deepsynth.template import Template
from deepsynth.training.checkpoint import read_meta

ADAPTER_HEADER = "serve_multiplexed_model_id"
LATENCY_BUCKETS_S = [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120]
ERRORS = {status: {"model": ErrorResponse} for status in (400, 401, 404, 408, 413, 415, 422, 429, 431, 503, 504)}
READY_CACHE_S = 5.0
"""How long /readyz reuses the controller's answer, so load-balancer probes cost it little."""
STATS_TIMEOUT_S = 10.0

api = FastAPI(
    title="DeepSynth summarizer",
    version=deepsynth.__version__,
    description="Summaries of documents (text, PDF or page images) read as page images by a DeepSeek-OCR model.",
    # Served by the ingress class below, so they ask for the token like every route but the probes.
    docs_url=None,
    openapi_url=None,
)


def _error(err: ServingError) -> JSONResponse:
    body = ErrorResponse(error=err.error, detail=err.detail).model_dump()
    return JSONResponse(body, status_code=err.status, headers=err.headers)


async def _within(deadline: Deadline, work: Any) -> Any:
    """`await work`, or the request's 504 once its deadline passes (a body that trickles in under body_timeout_s)."""
    try:
        return await asyncio.wait_for(work, timeout=deadline.remaining())
    except TimeoutError:
        raise deadline.expired() from None


# Oversized headers are refused, and the headers that steer Serve's proxy dropped, before any route runs.
api.add_middleware(RequestGuard)


@api.exception_handler(ServingError)
async def _serving_error(request: Request, err: ServingError) -> JSONResponse:
    return _error(err)


@api.exception_handler(RequestValidationError)
async def _request_validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
    return _error(ServingError(422, "invalid_request", validation_detail(err.errors())))


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code, "invalid_request")
    return _error(ServingError(err.status_code, code, str(err.detail), dict(err.headers or {})))


@api.exception_handler(Exception)
async def _internal_error(request: Request, err: Exception) -> JSONResponse:
    # Our bug: the traceback goes to the replica's log, the client gets no internals.
    return _error(ServingError(500, "internal_error", "The server failed on this request; see the replica logs."))


_MULTIPART_SCHEMA = {
    "type": "object",
    "required": ["file"],
    "properties": {
        "file": {"type": "array", "items": {"type": "string", "format": "binary"},
                 "description": "One PDF, or one PNG/JPEG per page in page order."},
        **SummarizeOptions.model_json_schema()["properties"],
    },
}
_SUMMARIZE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": SummarizeTextRequest.model_json_schema()},
            "multipart/form-data": {"schema": _MULTIPART_SCHEMA},
        },
    }
}


def models_response(config: ServeConfig, family: ModelFamily, templates: dict[str | None, Template]) -> ModelsResponse:
    adapters = []
    for name, path in sorted(config.adapters.items()):
        meta = read_meta(path)
        adapters.append(AdapterInfo(name=name, step=meta["step"], base_model=meta["base_model"], mode=meta["mode"],
                                    layout=templates[name].layout, prompt=templates[name].prompt))
    return ModelsResponse(model=config.model_id, family=family.name, layout=templates[None].layout,
                          prompt=templates[None].prompt, adapters=adapters)


def model_ready(status: Any, app: str, deployment: str, min_replicas: int) -> bool:
    """Whether the model deployment in `serve.status()` takes requests: a replica is running (so it
    loaded the model), or it scales from zero and is healthy, so a request makes Serve start one."""
    application = status.applications.get(app)
    overview = application.deployments.get(deployment) if application else None
    if overview is None:
        return False
    running = sum(count for state, count in overview.replica_states.items() if state == "RUNNING")
    return running > 0 or (min_replicas == 0 and overview.status in ("HEALTHY", "UPSCALING", "DOWNSCALING"))


@serve.deployment
class SummarizerModel:
    """One copy of the model; batches documents into `generate` calls, with LoRA adapters multiplexed by name."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = ServeConfig.model_validate(config)
        loaded = load_served_model(self.config)
        self.processor, self.family = loaded.processor, loaded.family
        self.adapters = AdapterSet(loaded.model, self.config.adapters)
        # Adapters, switching and generation share one model, so one batch at a time touches it
        # (Serve runs the per-adapter sub-batches of a batch concurrently).
        self.model_lock = asyncio.Lock()
        self.model_idle = asyncio.Event()
        self.model_idle.set()

        async def load_adapter(name: str) -> LoadedAdapter:
            return await asyncio.to_thread(self.adapters.load, name)

        self.get_adapter = serve.multiplexed(max_num_models_per_replica=self.config.max_loaded_adapters)(load_adapter)
        self._summarize_batch.set_max_batch_size(self.config.max_batch_size)
        self._summarize_batch.set_batch_wait_timeout_s(self.config.batch_wait_timeout_s)
        self.replica = serve.get_replica_context().replica_id.unique_id
        self.log = configure_serve_logging()
        self.requests = self.generate_calls = self.batches = 0
        self.documents_metric = metrics.Counter(
            "deepsynth_summarizer_documents", "Documents summarized by the model replicas.", tag_keys=("adapter",))
        self.generate_calls_metric = metrics.Counter(
            "deepsynth_summarizer_generate_calls", "generate() calls of the model replicas.", tag_keys=("adapter",))
        self.batch_size_metric = metrics.Histogram(
            "deepsynth_summarizer_batch_size", "Documents per batch.", boundaries=[1, 2, 4, 8, 16, 32, 64],
            tag_keys=("adapter",))
        self.queue_wait_metric = metrics.Histogram(
            "deepsynth_summarizer_queue_wait_s", "Seconds a document waited on the model replica before its batch "
            "started.", boundaries=LATENCY_BUCKETS_S, tag_keys=("adapter",))
        self.generate_metric = metrics.Histogram(
            "deepsynth_summarizer_generate_s", "Seconds per generate call (encode + generate).", boundaries=LATENCY_BUCKETS_S,
            tag_keys=("adapter",))

    async def summarize(self, job: SummaryJob) -> SummaryResult:
        job.received = time.monotonic()
        # While a batch generates, arrivals wait here and then enter the batch queue together, so the
        # next batch fills up instead of closing on the batch-wait timer with whoever came first.
        await self.model_idle.wait()
        return await self._summarize_batch(job)

    @serve.batch
    async def _summarize_batch(self, jobs: list[SummaryJob]) -> list[SummaryResult]:
        results: list[SummaryResult] = []
        async with self.model_lock:
            self.model_idle.clear()
            try:
                # Serve splits batches by multiplexed model id, so this is one adapter group unless a
                # caller bypassed the ingress.
                for adapter, group in groupby(jobs, key=lambda job: job.adapter):
                    group = list(group)
                    if adapter is not None:
                        await self.get_adapter(adapter)
                    group_results, generate_seconds = await asyncio.to_thread(self._generate, adapter, group)
                    results += group_results
                    self.generate_calls += len(generate_seconds)
                    tags = {"adapter": adapter or ""}
                    self.generate_calls_metric.inc(len(generate_seconds), tags=tags)
                    for seconds in generate_seconds:
                        self.generate_metric.observe(seconds, tags=tags)
                    self.documents_metric.inc(len(group), tags=tags)
                    self.batch_size_metric.observe(len(group), tags=tags)
                    for result in group_results:
                        self.queue_wait_metric.observe(result.queue_s, tags=tags)
                    self.log.info("generated %d summaries", len(group), extra={"adapter": adapter or "",
                                  "batch_size": len(group), "generate_s": sum(generate_seconds)})
            finally:
                self.model_idle.set()
        self.requests += len(jobs)
        self.batches += 1
        return results

    def _generate(self, adapter: str | None, jobs: list[SummaryJob]) -> tuple[list[SummaryResult], list[float]]:
        with self.adapters.active(adapter) as model:
            return summarize_jobs(model, self.processor, jobs, family=self.family)

    async def stats(self) -> ReplicaStats:
        return ReplicaStats(replica=self.replica, pid=os.getpid(), requests=self.requests,
                            generate_calls=self.generate_calls, batches=self.batches,
                            loaded_adapters=self.adapters.loaded)


@serve.deployment
class VllmSummarizerModel:
    """The model replica of `engine: vllm`: vLLM's async engine batches the documents in flight, adapters by name."""

    def __init__(self, config: dict[str, Any]) -> None:
        from deepsynth.serving.vllm_engine import VllmEngine

        self.config = ServeConfig.model_validate(config)
        self.engine = VllmEngine(self.config, context_length(self.config.base_model()))
        self.replica = serve.get_replica_context().replica_id.unique_id
        self.log = configure_serve_logging()
        self.requests = 0
        self.documents_metric = metrics.Counter(
            "deepsynth_summarizer_documents", "Documents summarized by the model replicas.", tag_keys=("adapter",))
        self.generate_metric = metrics.Histogram(
            "deepsynth_summarizer_generate_s", "Seconds per generate call (encode + generate).",
            boundaries=LATENCY_BUCKETS_S, tag_keys=("adapter",))

    async def summarize(self, job: SummaryJob) -> SummaryResult:
        job.received = time.monotonic()
        result = await self.engine.summarize(job)
        self.requests += 1
        tags = {"adapter": job.adapter or ""}
        self.documents_metric.inc(tags=tags)
        self.generate_metric.observe(result.generate_s, tags=tags)
        return result

    async def stats(self) -> ReplicaStats:
        # One engine call per document; vLLM's scheduler, not a batch of ours, puts them together.
        return ReplicaStats(replica=self.replica, pid=os.getpid(), requests=self.requests,
                            generate_calls=self.requests, batches=self.requests,
                            loaded_adapters=sorted(self.engine.lora))


@serve.deployment
@serve.ingress(api)
class SummarizerIngress:
    """The HTTP layer: limits, parsing and rendering here, generation on `SummarizerModel`."""

    def __init__(self, model: DeploymentHandle, config: dict[str, Any]) -> None:
        self.config = ServeConfig.model_validate(config)
        self.model = model
        # Read here, in the replica, so the token never appears in the Serve config or the dashboard.
        self.api_token = (read_token(self.config.api_token_file, self.config.api_token_env or "", os.environ,
                                     "The summarizer") if self.config.requires_token else None)
        self.pool = RenderPool(self.config.render_workers, self.config.max_queued_renders, self.config.retry_after_s)
        self.pdf_processes = threading.local()  # one PDFium child per render thread, started at its first PDF
        # The model's processor without its weights: the usage counts are the replica's own.
        _, self.family = load_processor(self.config.base_model(), v1_mode=v1_mode_for(self.config.template().layout))
        self.budget = ContextBudget(self.family, context_length(self.config.base_model()))
        # What each servable model was trained with: the layout text is rendered in, the prompt, the decoding.
        self.templates = {None: self.config.template(), **{name: self.config.template(name)
                                                            for name in self.config.adapters}}
        self.models = models_response(self.config, self.family, self.templates)
        self.ready_at, self.ready = float("-inf"), False
        # Its own thread: in the default pool, the controller call would queue behind the rendering of a full server.
        self.status_thread = ThreadPoolExecutor(1, thread_name_prefix="readyz")
        self.replica = serve.get_replica_context().replica_id.unique_id
        self.log = configure_serve_logging()
        self.requests = self.rejected = 0
        self.requests_metric = metrics.Counter(
            "deepsynth_summarizer_requests", "Summarize requests by HTTP status and adapter.",
            tag_keys=("status", "adapter"))
        self.latency_metric = metrics.Histogram(
            "deepsynth_summarizer_latency_s", "End-to-end seconds of summarize requests that succeeded.",
            boundaries=LATENCY_BUCKETS_S, tag_keys=("adapter",))

    @api.get("/healthz", response_model=HealthResponse)
    async def healthz(self) -> HealthResponse:
        """The ingress process is alive."""
        return HealthResponse(status="ok")

    @api.get("/readyz", response_model=HealthResponse, responses={503: {"model": ErrorResponse}})
    async def readyz(self) -> HealthResponse:
        """200 while a model replica is running (it has loaded the model), however busy; 503 otherwise."""
        # Asking the model itself would queue behind the requests and fail exactly when the server is busy.
        if time.monotonic() - self.ready_at >= READY_CACHE_S:
            try:
                status = await asyncio.wait_for(
                    asyncio.get_running_loop().run_in_executor(self.status_thread, serve.status), timeout=2.0)
            except (TimeoutError, RayServeException, RayError):
                raise ServingError(503, "not_ready", "Serve's controller did not answer; retry shortly.",
                                   {"Retry-After": str(self.config.retry_after_s)}) from None
            self.ready = model_ready(status, self.model.app_name, self.model.deployment_name, self.config.min_replicas)
            self.ready_at = time.monotonic()
        if not self.ready:
            raise ServingError(503, "not_ready", "No model replica is running yet; retry shortly.",
                               {"Retry-After": str(self.config.retry_after_s)})
        return HealthResponse(status="ready")

    @api.get("/openapi.json", include_in_schema=False)
    async def openapi(self, request: Request) -> JSONResponse:
        self._authorize(request)
        return JSONResponse(api.openapi())

    @api.get("/docs", include_in_schema=False)
    async def docs(self, request: Request) -> HTMLResponse:
        self._authorize(request)
        return get_swagger_ui_html(openapi_url=f"{request.scope.get('root_path', '')}/openapi.json",
                                   title=f"{api.title} - Swagger UI")

    @api.get("/v1/models", response_model=ModelsResponse)
    async def list_models(self, request: Request) -> ModelsResponse:
        """The base model and the LoRA adapters a request can name."""
        self._authorize(request)
        return self.models

    @api.get("/v1/stats", response_model=StatsResponse)
    async def stats(self, request: Request) -> StatsResponse:
        """Counters of this ingress replica and of the model replica that answers (batching shows as
        fewer generate_calls than requests)."""
        self._authorize(request)
        model = await self._await_model(
            self.model.stats.remote(), STATS_TIMEOUT_S,
            f"The model replica did not report its stats within {STATS_TIMEOUT_S:g} s (it is busy); retry later.")
        ingress = IngressStats(replica=self.replica, pid=os.getpid(), requests=self.requests, rejected=self.rejected)
        return StatsResponse(ingress=ingress, model=model)

    @api.post("/v1/summarize", response_model=SummarizeResponse, responses=ERRORS, openapi_extra=_SUMMARIZE_BODY)
    async def summarize(self, request: Request) -> SummarizeResponse:
        """Summarize JSON `{"text": ...}`, or a multipart upload of one PDF or PNG/JPEG pages (field `file`)."""
        started = time.monotonic()
        self.requests += 1
        status = 500
        try:
            self._authorize(request)
            response = await self._summarize(request, started)
            status = 200
            self.latency_metric.observe(time.monotonic() - started, tags={"adapter": response.adapter or ""})
            return response
        except ServingError as err:
            status = err.status
            raise
        finally:
            if status != 200:
                self.rejected += 1
            # The adapter is known once the options are read (`_job`); earlier refusals have none.
            adapter = getattr(request.state, "adapter", None) or ""
            self.requests_metric.inc(tags={"status": str(status), "adapter": adapter})
            self.log.info("summarize %d", status, extra={"adapter": adapter, "status": status,
                                                         "seconds": time.monotonic() - started})

    def _authorize(self, request: Request) -> None:
        """401 unless this server serves without a token or the request carries it (every route but the probes)."""
        if self.api_token is not None and not bearer_accepted(request, self.api_token):
            raise ServingError(401, "unauthorized", "Missing or invalid token: send 'Authorization: Bearer <token>' "
                               "as a header (never in the URL).", {"WWW-Authenticate": "Bearer"})

    async def _summarize(self, request: Request, started: float) -> SummarizeResponse:
        config = self.config
        deadline = Deadline(expires=started + config.request_timeout_s, limit_s=config.request_timeout_s)
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type == "application/json":
            body = await _within(deadline, read_body(request.headers, request.stream(), config.max_body_bytes,
                                                     config.body_timeout_s))
            try:
                payload = SummarizeTextRequest.model_validate_json(body)
            except ValidationError as err:
                raise ServingError(422, "invalid_request", validation_detail(err.errors())) from None
            options = payload.options()
            job = self._job(options, request)
            job.pages, visual_tokens, text_tokens = await self.pool.run(
                lambda: self._text_input(payload.text, job, deadline), deadline)
        elif media_type == "multipart/form-data":
            files, fields = await _within(deadline, self._read_form(request))
            try:
                options = SummarizeOptions.model_validate(fields)
            except ValidationError as err:
                raise ServingError(422, "invalid_request", validation_detail(err.errors())) from None
            job = self._job(options, request)
            job.pages, visual_tokens, text_tokens = await self.pool.run(
                lambda: self._file_input(files, job, deadline), deadline)
        else:
            raise ServingError(415, "unsupported_media_type",
                               f"Content-Type {media_type or 'none'!r} is not accepted; send application/json "
                               "with a text field, or multipart/form-data with a PDF or page images.")
        previews = await self.pool.run(lambda: page_previews(job.pages), deadline) if options.previews else None
        render_s = time.monotonic() - started
        result = await self._generate(job, deadline)
        total_s = time.monotonic() - started
        return SummarizeResponse(
            summary=result.summary,
            model=self.config.model_id,
            adapter=job.adapter,
            usage=Usage(
                pages=len(job.pages),
                visual_tokens=visual_tokens,
                source_text_tokens=text_tokens,
                summary_tokens=result.summary_tokens,
                compression_ratio=text_tokens / visual_tokens if text_tokens is not None else None,
                batch_size=result.batch_size,
                timings=Timings(render_s=render_s, queue_s=result.queue_s, generate_s=result.generate_s,
                                total_s=total_s),
            ),
            previews=previews,
        )

    def _text_input(self, text: str, job: SummaryJob, deadline: Deadline) -> tuple[list[Image.Image], int, int]:
        """Pages, visual tokens and text tokens of `text`, counted as evaluation counts them."""
        pages = text_pages(text, self.templates[job.adapter].layout, self.config, self._budget_check(job),
                           deadline.check)
        stats = compression_stats(text, pages, self.family)
        return pages, stats.visual_tokens, stats.text_tokens

    def _file_input(self, files: list[bytes], job: SummaryJob, deadline: Deadline
                    ) -> tuple[list[Image.Image], int, None]:
        render_ends = time.monotonic() + self.config.render_timeout_s
        process = self._pdf_process()

        def seconds_left() -> float:
            return min(deadline.remaining(), render_ends - time.monotonic())

        try:
            pages = file_pages(files, self.config, self._budget_check(job), self.family.useful_size, deadline.check,
                               lambda data: process.open(data, seconds_left))
        except PdfTimeout:
            if deadline.remaining() <= 0:
                raise deadline.expired() from None
            raise ServingError(413, "document_too_complex", (
                f"The PDF took longer than this server's limit of {self.config.render_timeout_s:g} s to render; "
                "send fewer pages, or a PDF of scanned pages rather than millions of drawn shapes.")) from None
        return pages, sum(self.family.count_visual_tokens(*page.size) for page in pages), None

    def _pdf_process(self) -> PdfProcess:
        """This render thread's PDFium child (a child renders one document at a time)."""
        if not hasattr(self.pdf_processes, "process"):
            self.pdf_processes.process = PdfProcess(self.config.pdf_memory_mb)
        return self.pdf_processes.process

    def _budget_check(self, job: SummaryJob):
        return lambda sizes: self.budget.check(sizes, job.prompt, job.options.max_new_tokens)

    async def _read_form(self, request: Request) -> tuple[list[bytes], dict[str, str]]:
        check_content_length(request.headers, self.config.max_body_bytes)
        stream = limited_stream(request.stream(), self.config.max_body_bytes, self.config.body_timeout_s)
        parser = MultiPartParser(request.headers, stream,
                                 max_files=self.config.max_pages, max_fields=8, max_part_size=64 * 1024)
        # If parse() fails, our 413 from limited_stream included, Starlette closes the files it spooled;
        # after it succeeds, form.close() below does.
        try:
            form = await parser.parse()
        except MultiPartException as err:
            status = 413 if "Too many files" in str(err) else 400
            raise ServingError(status, "payload_too_large" if status == 413 else "invalid_request",
                               f"{err} Send at most {self.config.max_pages} page files and short option fields."
                               ) from None
        try:
            files = [await value.read() for _, value in form.multi_items() if isinstance(value, UploadFile)]
            fields = {key: value for key, value in form.multi_items() if isinstance(value, str)}
        finally:
            await form.close()
        return files, fields

    def _job(self, options: SummarizeOptions, request: Request) -> SummaryJob:
        """Check the options against the server's limits and adapters, before any rendering."""
        config = self.config
        header = request.headers.get(ADAPTER_HEADER) or None
        if options.adapter and header and options.adapter != header:
            raise ServingError(422, "invalid_request", f"The adapter field ({options.adapter!r}) and the "
                               f"{ADAPTER_HEADER} header ({header!r}) disagree; send one of them.")
        adapter = options.adapter or header
        if adapter is not None and adapter not in config.adapters:
            raise ServingError(404, "adapter_not_found", f"No adapter named {adapter!r}; GET /v1/models lists "
                               f"the servable ones: {sorted(config.adapters)}.")
        request.state.adapter = adapter  # only known names label metrics, so clients cannot grow their series
        template = self.templates[adapter]
        max_new_tokens = options.max_new_tokens or template.generation.max_new_tokens
        if max_new_tokens > config.max_new_tokens_limit:
            raise ServingError(422, "invalid_request", f"max_new_tokens={max_new_tokens} is above this server's "
                               f"limit of {config.max_new_tokens_limit}.")
        min_new_tokens = options.min_new_tokens or template.generation.min_new_tokens
        if min_new_tokens > max_new_tokens:
            raise ServingError(422, "invalid_request", f"min_new_tokens={min_new_tokens} is above "
                               f"max_new_tokens={max_new_tokens}; lower it or raise max_new_tokens.")
        num_beams = options.num_beams or template.generation.num_beams
        if num_beams > config.max_num_beams:
            raise ServingError(422, "invalid_request",
                               f"num_beams={num_beams} is above this server's limit of {config.max_num_beams}.")
        generation = replace(template.generation, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
                             num_beams=num_beams)
        return SummaryJob(pages=[], options=generation, prompt=template.prompt, adapter=adapter)

    async def _generate(self, job: SummaryJob, deadline: Deadline) -> SummaryResult:
        handle = self.model.options(multiplexed_model_id=job.adapter or "")
        return await self._await_model(handle.summarize.remote(job), max(deadline.remaining(), 0.001),
                                       deadline.expired().detail)

    async def _await_model(self, response: Any, timeout_s: float, timeout_detail: str) -> Any:
        """The model deployment's answer, with its backpressure, absence or slowness as 503/429/504."""
        retry = {"Retry-After": str(self.config.retry_after_s)}
        try:
            return await asyncio.wait_for(response, timeout=timeout_s)
        except TimeoutError:
            response.cancel()
            raise ServingError(504, "timeout", timeout_detail) from None
        except BackPressureError as err:
            raise ServingError(err.status_code, "overloaded", "The server is at capacity (its queue is full); "
                               "retry after the Retry-After delay.", retry) from None
        except DeploymentUnavailableError:
            raise ServingError(503, "not_ready", "The model deployment is unavailable; retry shortly.",
                               retry) from None


def build_app(args: dict[str, Any]) -> serve.Application:
    """Validate `args` (the fields of ServeConfig) and bind the ingress to the model deployment."""
    config = load_serve_config(args)
    plain = config.model_dump()
    backpressure = {"status_code": config.overload_status, "retry_after_s": config.retry_after_s}
    model_class = VllmSummarizerModel if config.engine == "vllm" else SummarizerModel
    model = model_class.options(
        autoscaling_config={
            "min_replicas": config.min_replicas,
            "initial_replicas": max(config.min_replicas, 1),
            "max_replicas": config.max_replicas,
            "target_ongoing_requests": config.target_ongoing_requests,
            "upscale_delay_s": config.upscale_delay_s,
            "downscale_delay_s": config.downscale_delay_s,
        },
        ray_actor_options={"num_cpus": config.num_cpus, "num_gpus": config.num_gpus},
        max_ongoing_requests=config.max_ongoing_requests,
        max_queued_requests=config.max_queued_requests,
        backpressure_config=backpressure,
        logging_config=serve_logging_config(config.log_format),
    ).bind(plain)
    return SummarizerIngress.options(
        num_replicas=config.ingress_replicas,
        ray_actor_options={"num_cpus": config.ingress_num_cpus},
        max_ongoing_requests=config.ingress_max_ongoing_requests,
        max_queued_requests=config.ingress_max_queued_requests,
        backpressure_config=backpressure,
        logging_config=serve_logging_config(config.log_format),
    ).bind(model, plain)


# `serve run serve.summarizer:app key=value ...` and `import_path: serve.summarizer:app` call the builder.
app = build_app
