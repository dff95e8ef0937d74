"""Request, response and error schemas of the summarization HTTP API, and the error that carries a status.

The HTTP layer validates bodies against these pydantic models and returns them as JSON; OpenAPI
(`/docs`) is generated from them. Every refusal is a `ServingError` rendered as `ErrorResponse`
`{"error": <code>, "detail": <what was wrong and what to do>}` with its HTTP status.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator


class ServingError(Exception):
    """A refusal with the HTTP status, a short machine-readable code and a sentence for people."""

    def __init__(self, status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = headers or {}

    def __reduce__(self):
        return (type(self), (self.status, self.error, self.detail, self.headers))


def validation_detail(errors: Iterable[dict[str, Any]], root: str = "body") -> str:
    """Pydantic's errors as one sentence for people: `field: message; field: message`.

    FastAPI's `body` prefix is dropped; an error about the whole input is named `root`.
    """
    return "; ".join(
        f"{'.'.join(str(part) for part in error['loc'] if part != 'body') or root}: "
        f"{error['msg'].removeprefix('Value error, ')}"
        for error in errors
    )


class ErrorResponse(BaseModel):
    error: str = Field(examples=["payload_too_large"])
    """A stable code: invalid_request, payload_too_large, unsupported_media_type, bad_document,
    adapter_not_found, not_found, unauthorized, request_timeout, headers_too_large, overloaded, timeout,
    not_ready or internal_error."""
    detail: str
    """What was wrong and how to fix it."""


# Each option is declared once and used by both request shapes, so the JSON and the form fields
# validate and document alike.
MaxNewTokens = Annotated[int | None, Field(ge=1, description="Summary length cap in tokens (server default if unset).")]
MinNewTokens = Annotated[int | None, Field(ge=0, description="Tokens to write before the summary may end "
                                           "(0 or unset: the model may stop at once).")]
NumBeams = Annotated[int | None, Field(ge=1, description="1 is greedy decoding; more is beam search.")]
AdapterName = Annotated[str | None, Field(min_length=1, description="Name of a LoRA adapter from GET /v1/models.")]
Previews = Annotated[bool, Field(description="Also return a small JPEG of every page the model saw "
                                 "(`previews`, longest side at most 256 px).")]


class SummarizeOptions(BaseModel):
    """Generation options; as JSON fields next to `text`, or as multipart form fields next to the files."""

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: MaxNewTokens = None
    min_new_tokens: MinNewTokens = None
    num_beams: NumBeams = None
    adapter: AdapterName = None
    previews: Previews = False


class SummarizeTextRequest(BaseModel):
    """`POST /v1/summarize` with `Content-Type: application/json`: the text and the `SummarizeOptions`."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(description="The document's text; it is rendered to page images on the server.")
    max_new_tokens: MaxNewTokens = None
    min_new_tokens: MinNewTokens = None
    num_beams: NumBeams = None
    adapter: AdapterName = None
    previews: Previews = False

    @field_validator("text")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("text is empty; send the document's text")
        return value

    def options(self) -> SummarizeOptions:
        return SummarizeOptions.model_validate(self.model_dump(exclude={"text"}))


class Timings(BaseModel):
    render_s: float
    """Turning the input into page images (text rendering, PDF rendering or image decoding)."""
    queue_s: float
    """Waiting on the model replica for a batch to form and start."""
    generate_s: float
    """Encoding the pages and generating, for the whole batch this request was part of."""
    total_s: float


class Usage(BaseModel):
    pages: int
    visual_tokens: int
    """Tokens the page images cost the decoder."""
    source_text_tokens: int | None
    """Tokens of the source text in the model's tokenizer; known only for text input."""
    summary_tokens: int
    compression_ratio: float | None
    """source_text_tokens / visual_tokens; known only for text input."""
    batch_size: int
    """Documents generated together with this one in one generate call."""
    timings: Timings


class SummarizeResponse(BaseModel):
    summary: str
    model: str
    adapter: str | None
    usage: Usage
    previews: list[str] | None = None
    """With `previews: true`: each page the model saw, in order, as a `data:image/jpeg;base64,...` URL of at most
    256 px on its longest side (one per page, so at most the server's max_pages); None otherwise."""


class AdapterInfo(BaseModel):
    name: str
    step: int
    base_model: str
    mode: str
    layout: str
    """Page layout text sent to this adapter is rendered with (its training layout unless the server sets one)."""
    prompt: str
    """Instruction placed after the pages (its training prompt unless the server sets one)."""


class ModelsResponse(BaseModel):
    model: str
    """The base model (or checkpoint) every request runs on."""
    family: str
    layout: str
    """Page layout text input is rendered with: the checkpoint's training layout unless the server sets one."""
    prompt: str
    """Instruction placed after the pages: the checkpoint's training prompt unless the server sets one."""
    adapters: list[AdapterInfo]
    """LoRA adapters a request may name in `adapter` or the `serve_multiplexed_model_id` header."""


class ReplicaStats(BaseModel):
    replica: str
    pid: int
    requests: int
    """Documents this replica summarized."""
    generate_calls: int
    batches: int
    loaded_adapters: list[str]


class IngressStats(BaseModel):
    replica: str
    pid: int
    requests: int
    rejected: int
    """Requests answered with a 4xx, 5xx or timeout by this ingress replica."""


class StatsResponse(BaseModel):
    """Counters of the replicas that answered (one ingress and one model replica), since they started."""

    ingress: IngressStats
    model: ReplicaStats


class HealthResponse(BaseModel):
    status: str
