"""The summarization server's settings: one flat, validated `ServeConfig`.

`serve run serve.summarizer:build_app key=value ...` and the `args:` of a `serve deploy` YAML
arrive as a dict of strings; `load_serve_config` turns them into a `ServeConfig` or raises a
`ValueError` that names every wrong flag and says how to fix it, before anything is loaded.
Adapters are LoRA checkpoints written by `ray_jobs/train.py`, given as `name=path` pairs. The
layout, prompt and generation defaults are each checkpoint's (and adapter's) template unless an
argument sets them for the whole server.

    config = load_serve_config({"checkpoint": "runs/x/step-000500", "adapters": "legal=runs/y/step-000300"})
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from deepsynth.data.documents import DocumentLimits
from deepsynth.data.render import LAYOUTS
from deepsynth.serving.schemas import validation_detail
from deepsynth.template import Template
from deepsynth.training.checkpoint import read_meta, read_template

ADAPTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
DEVICE = re.compile(r"^(auto|cpu|cuda(:[0-9]+)?)$")
# "default" is PEFT's name for a LoRA checkpoint's own adapter, which may be the served model.
RESERVED_ADAPTER_NAMES = {"default", "base"}


class ServeConfig(BaseModel):
    """Every setting of the summarization app; each field is a `key=value` argument of `build_app`."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    # --- what is served
    model: str | None = None
    """Hub id or local folder of a model (as `load_model_and_processor` takes). Give this or `checkpoint`."""
    checkpoint: str | None = None
    """A `step-XXXXXX` folder written by ray_jobs/train.py, loaded with `load_checkpoint`. Give this or `model`."""
    adapters: dict[str, str] = Field(default_factory=dict)
    """LoRA checkpoints servable by name on the same base model: a dict, or `name=path,name=path`."""
    max_loaded_adapters: int = Field(4, ge=1)
    """Adapters kept loaded per model replica (least recently used are unloaded)."""
    device: str = "auto"
    """"auto" (CUDA when the replica reserves GPUs with `num_gpus`, else CPU), "cpu", "cuda" or "cuda:N"."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    layout: str | None = None
    """Page layout that text input is rendered with (deepsynth.data.render.LAYOUTS); None is the template's."""
    prompt: str | None = Field(None, min_length=1, max_length=2000)
    """Instruction after the pages; None is the template's (what the checkpoint was trained with)."""

    # --- the generation engine
    engine: Literal["hf", "vllm"] = "hf"
    """hf: transformers `generate` in batches (`@serve.batch`), any device. vllm: vLLM's async engine on a GPU
    (continuous batching, paged KV cache) over `vllm_model`; needs the `vllm` extra."""
    vllm_model: str | None = None
    """engine=vllm: the served model exported in the original layout (`deepsynth export <checkpoint or model>
    --format original <folder>`); `model`/`checkpoint` still give the processor, template and adapters' base."""
    vllm_gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    """engine=vllm: share of the GPU's memory vLLM takes for weights and KV cache (lower it to share a GPU)."""
    vllm_max_lora_rank: int = Field(64, ge=1)
    """engine=vllm: the largest LoRA rank among the adapters (vLLM sizes its LoRA buffers with it)."""
    vllm_ngram: Literal["template", "recipe"] = "template"
    """engine=vllm: the n-gram repetition guard (vLLM's DeepSeek-OCR logits processor): the template's
    windowed guard (no_repeat_ngram_size within ngram_window), or vLLM's recipe (30 within 90, <td></td> allowed)."""
    vllm_enforce_eager: bool = False
    """engine=vllm: skip CUDA-graph capture (faster start, slower decoding)."""

    # --- generation
    default_max_new_tokens: int | None = Field(None, ge=1)
    """Summary length when a request sets none; None is the template's, capped at max_new_tokens_limit."""
    max_new_tokens_limit: int = Field(512, ge=1, le=4096)
    """Largest `max_new_tokens` a request may ask for."""
    max_num_beams: int = Field(4, ge=1, le=16)
    no_repeat_ngram_size: int | None = Field(None, ge=0)
    """The repetition guard's n-gram size (0 is off); None is the template's."""
    repetition_penalty: float | None = Field(None, ge=1.0)
    """1.0 is off; None is the template's."""

    # --- input limits (checked before any expensive work)
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    """Largest request body; larger ones get 413 before they are read."""
    max_text_chars: int = Field(200_000, ge=1)
    max_pages: int = Field(16, ge=1)
    max_pixels: int = Field(20_000_000, ge=1)
    """Most pixels per page (uploaded image or rendered PDF page); guards against decompression bombs."""
    max_document_pixels: int = Field(64_000_000, ge=1)
    """Most pixels decoded or rendered for one request, summed over its pages (16 pages of 4 megapixels)."""
    pdf_dpi: int = Field(144, ge=36, le=600)
    """Resolution PDF pages are rendered at, lowered for a page whose pixels the model would only scale away."""
    request_timeout_s: float = Field(120.0, gt=0)
    """Per-request deadline (body + render + queue + generate); past it the client gets 504 and the work stops."""
    body_timeout_s: float = Field(10.0, gt=0)
    """Longest wait for the next chunk of a request body; past it the client gets 408."""

    # --- rendering in the ingress
    render_workers: int = Field(2, ge=1)
    """Threads per ingress replica that render text and decode files."""
    max_queued_renders: int = Field(64, ge=0)
    """Requests waiting for a render thread before new ones are refused with 503 and Retry-After."""
    render_timeout_s: float = Field(30.0, gt=0)
    """Longest one request's PDF may take to render; past it PDFium is killed and the client gets 413
    `document_too_complex` (a few kilobytes of PDF can stroke a million lines on one page)."""
    pdf_memory_mb: int = Field(1024, ge=128)
    """Address space of each render thread's PDFium child process; a PDF that needs more is a 400."""

    # --- authentication
    api_token_env: str | None = None
    """Require `Authorization: Bearer <token>`, the token read from this environment variable in the ingress
    replica. None (and no api_token_file) serves without a token, as the local demo does."""
    api_token_file: str | None = None
    """Require a bearer token read from this file in the ingress replica; takes precedence over api_token_env."""

    # --- batching and backpressure of the model deployment
    max_batch_size: int = Field(16, ge=1)
    batch_wait_timeout_s: float = Field(0.1, ge=0)
    """Seconds a batch waits for more requests after its first, unless it fills up first."""
    max_ongoing_requests: int = Field(32, ge=1)
    """Requests one model replica holds at once; at least `max_batch_size` so a batch can fill."""
    max_queued_requests: int = Field(64, ge=-1)
    """Requests waiting for a model replica before new ones are refused with 503/429 (-1: unbounded)."""
    overload_status: Literal[503, 429] = 503
    retry_after_s: int = Field(1, ge=0)

    # --- scaling and resources of the model deployment
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    target_ongoing_requests: float = Field(16.0, gt=0)
    upscale_delay_s: float = Field(10.0, ge=0)
    downscale_delay_s: float = Field(300.0, ge=0)
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    """Fractional GPUs per model replica, e.g. 0.5 to pack two replicas on one GPU."""

    # --- the HTTP ingress deployment (parsing, limits, rendering)
    ingress_replicas: int = Field(1, ge=1)
    ingress_num_cpus: float = Field(0.5, ge=0)
    ingress_max_ongoing_requests: int = Field(256, ge=1)
    ingress_max_queued_requests: int = Field(1024, ge=-1)

    # --- observability
    log_format: Literal["text", "json"] = "text"
    """Replica log files as text, or one JSON object per line (Serve's JSON logging; docs/observability.md)."""

    @field_validator("adapters", mode="before")
    @classmethod
    def _parse_adapters(cls, value: Any) -> Any:
        if isinstance(value, str):
            pairs = [item.strip() for item in value.split(",") if item.strip()]
            bad = [item for item in pairs if "=" not in item]
            if bad:
                raise ValueError(f"write adapters as name=path,name=path; got {bad[0]!r}")
            return dict(item.split("=", 1) for item in pairs)
        return value

    @field_validator("max_queued_requests", "ingress_max_queued_requests")
    @classmethod
    def _queue_bound(cls, value: int) -> int:
        if value == 0:
            raise ValueError("must be -1 (unbounded) or at least 1; Ray Serve has no zero-length queue")
        return value

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not DEVICE.match(value):
            raise ValueError(f"unknown device {value!r}; use auto, cpu, cuda or cuda:N")
        return value

    @field_validator("layout")
    @classmethod
    def _known_layout(cls, value: str | None) -> str | None:
        if value is not None and value not in LAYOUTS:
            raise ValueError(f"unknown layout {value!r}; choose one of {sorted(LAYOUTS)}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ServeConfig:
        if (self.model is None) == (self.checkpoint is None):
            raise ValueError("give exactly one of model=<hub id or folder> and checkpoint=<step-XXXXXX folder>")
        if self.default_max_new_tokens is not None and self.default_max_new_tokens > self.max_new_tokens_limit:
            raise ValueError(
                f"default_max_new_tokens={self.default_max_new_tokens} is above "
                f"max_new_tokens_limit={self.max_new_tokens_limit}; lower it or raise the limit"
            )
        if self.max_ongoing_requests < self.max_batch_size:
            raise ValueError(
                f"max_ongoing_requests={self.max_ongoing_requests} is below max_batch_size={self.max_batch_size}, "
                "so a batch could never fill; raise max_ongoing_requests"
            )
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas={self.min_replicas} is above max_replicas={self.max_replicas}")
        if self.device.startswith("cuda") and self.num_gpus == 0:
            raise ValueError(f"device={self.device!r} needs num_gpus > 0 (fractions like 0.5 are fine)")
        if self.engine == "vllm":
            if self.vllm_model is None:
                raise ValueError("engine=vllm needs vllm_model=<folder>: export the served model with `deepsynth "
                                 "export <checkpoint or model> --format original <folder>` and pass that folder")
            if self.num_gpus == 0 or self.device == "cpu":
                raise ValueError("engine=vllm runs on CUDA: set num_gpus > 0 (e.g. 1) and device auto or cuda; "
                                 "use engine=hf on CPUs")
            if self.max_num_beams != 1:
                raise ValueError(f"engine=vllm decodes greedily (vLLM's engine has no beam search here), so set "
                                 f"max_num_beams=1 (got {self.max_num_beams}), or use engine=hf for beam search")
        elif self.vllm_model is not None:
            raise ValueError("vllm_model is read only with engine=vllm; set engine=vllm or drop vllm_model")
        for name in self.adapters:
            if not ADAPTER_NAME.match(name) or name in RESERVED_ADAPTER_NAMES:
                raise ValueError(
                    f"adapter name {name!r} is not allowed; use 1-64 letters, digits, '-' or '_', "
                    f"not {sorted(RESERVED_ADAPTER_NAMES)}"
                )
        return self

    @property
    def limits(self) -> DocumentLimits:
        return DocumentLimits(max_bytes=self.max_body_bytes, max_pages=self.max_pages, max_pixels=self.max_pixels,
                              max_document_pixels=self.max_document_pixels, pdf_dpi=self.pdf_dpi)

    @property
    def requires_token(self) -> bool:
        return self.api_token_env is not None or self.api_token_file is not None

    @property
    def model_id(self) -> str:
        """The name clients see for the served model: the model id, or the checkpoint folder."""
        return self.model or str(self.checkpoint)

    @property
    def replica_device(self) -> str:
        """The device a model replica loads on, for `resolve_device`: "auto" is the CPU unless the replica
        reserved GPUs (Ray leaves every GPU of the node visible to an actor that reserved none)."""
        return "cpu" if self.device == "auto" and self.num_gpus == 0 else self.device

    def base_model(self) -> str:
        """The base model adapters must have been trained on."""
        return read_meta(self.checkpoint)["base_model"] if self.checkpoint else str(self.model)

    def template(self, adapter: str | None = None) -> Template:
        """What a request on `adapter` (None: the served model) is rendered, prompted and decoded with:
        that checkpoint's template, with this server's explicit settings on top."""
        source = self.adapters[adapter] if adapter is not None else self.checkpoint
        trained = read_template(source) if source is not None else Template()
        template = trained.with_overrides(layout=self.layout, prompt=self.prompt,
                                          no_repeat_ngram_size=self.no_repeat_ngram_size,
                                          repetition_penalty=self.repetition_penalty,
                                          max_new_tokens=self.default_max_new_tokens)
        return template.with_overrides(max_new_tokens=min(template.generation.max_new_tokens,
                                                          self.max_new_tokens_limit))


def load_serve_config(args: dict[str, Any]) -> ServeConfig:
    """Validate `build_app` arguments and the checkpoints they name; raise ValueError naming each bad flag."""
    try:
        config = ServeConfig.model_validate(args)
    except ValidationError as err:
        raise ValueError(f"Invalid summarizer arguments: {validation_detail(err.errors(), root='args')}.") from None
    if config.engine == "vllm":
        from deepsynth.serving.vllm_engine import VLLM_EXTRA, vllm_installed

        if not vllm_installed():
            raise ValueError("engine=vllm needs vLLM, which is not installed here: install the `vllm` extra "
                             f"({VLLM_EXTRA}, CUDA machines only; the GPU image deploy/Dockerfile has it), or use "
                             "engine=hf.")
    _check_paths(config)
    if config.engine == "vllm":
        check_vllm_model(config)
    return config


def check_vllm_model(config: ServeConfig) -> None:
    """The vllm_model folder is an original-layout export of the served model that vLLM can run."""
    from deepsynth.export import read_export_info

    try:
        info = read_export_info(config.vllm_model)
    except FileNotFoundError as err:
        raise ValueError(f"vllm_model={config.vllm_model!r}: {err}") from None
    served = config.checkpoint or config.model
    if not _same_model(info["source"], str(served)):
        raise ValueError(f"vllm_model={config.vllm_model!r} was exported from {info['source']!r}, but the served "
                         f"model is {served!r}; export that one with `deepsynth export {served} --format original`.")
    if info["kind"] == "merged" and config.adapters:
        raise ValueError("with engine=vllm, adapters apply to the exported base weights, but vllm_model holds a "
                         "merged LoRA checkpoint; serve model=<base model> with vllm_model=<its export> and the "
                         "LoRA checkpoints as adapters, or drop adapters.")
    from safetensors.torch import load_file

    from deepsynth.model.original_layout import vllm_adapter
    from deepsynth.training.checkpoint import ADAPTER_DIR, local_checkpoint

    for name, path in config.adapters.items():
        try:
            vllm_adapter(load_file(local_checkpoint(path) / ADAPTER_DIR / "adapter_model.safetensors"))
        except ValueError as err:
            raise ValueError(f"adapters.{name}={path!r} cannot be served with engine=vllm: {err}") from None
        if config.template(name).generation.num_beams != 1:
            raise ValueError(f"adapters.{name} was trained to decode with num_beams="
                             f"{config.template(name).generation.num_beams}; engine=vllm decodes greedily")
    if config.template().generation.num_beams != 1:
        raise ValueError(f"the served model's template decodes with num_beams={config.template().generation.num_beams}; "
                         "engine=vllm decodes greedily, use engine=hf")
    if info["vllm_incompatibilities"]:
        raise ValueError(f"vllm_model={config.vllm_model!r} cannot run on vLLM, which builds DeepSeek-OCR-2's "
                         f"published vision tower in: {'; '.join(info['vllm_incompatibilities'])}. Serve it with "
                         "engine=hf.")


def _check_paths(config: ServeConfig) -> None:
    if config.checkpoint is not None:
        _meta(config.checkpoint, "checkpoint")
    elif _looks_local(config.model) and not Path(config.model).is_dir():
        raise ValueError(f"model={config.model!r} is not a folder; pass an existing model folder or a hub id.")
    base = config.base_model()
    for name, path in config.adapters.items():
        meta = _meta(path, f"adapters.{name}")
        if meta["mode"] not in ("lora", "qlora"):
            raise ValueError(
                f"adapters.{name}={path!r} is a {meta['mode']} checkpoint, not a LoRA adapter; "
                "serve it on its own with checkpoint=<path>."
            )
        if not _same_model(meta["base_model"], base):
            raise ValueError(
                f"adapters.{name}={path!r} was trained on {meta['base_model']!r}, but the served base model is "
                f"{base!r}; serve adapters of one base model per app."
            )


def _meta(path: str, flag: str) -> dict:
    try:
        return read_meta(path)
    except FileNotFoundError:
        raise ValueError(f"{flag}={path!r} is not a checkpoint (no meta.json); pass a step-XXXXXX folder "
                         "written by ray_jobs/train.py.") from None


def _looks_local(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or Path(name).exists()


def _same_model(a: str, b: str) -> bool:
    if _looks_local(a) and _looks_local(b):
        return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
    return a == b
