"""An ASGI middleware that refuses oversized headers and drops the headers that steer Ray Serve's proxy.

Ray Serve's proxy reads two request headers as instructions: `x-request-timeout-seconds` replaces
its request timeout (0.001 turns every request into a 408) and `x-request-disconnect-disabled: ?1`
keeps a request running after its client left. Any client can send them, so `RequestGuard` removes
them, leaving the server's own deadline as the only one. It also answers 431 to a request with
more headers, or more header bytes, than `HeaderLimits` allows, and turns the proxy's plain-text
404, which repeats the request's path, into a JSON one that does not. It wraps the summarizer's ingress,
and, to reach the proxy before it reads those headers, the proxy itself through Ray Serve's
`RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=serve.proxy:middlewares` (docs/serving.md, Security).

    app.add_middleware(RequestGuard, limits=HeaderLimits(max_header_bytes=16384))
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

SERVER_ONLY_HEADERS = frozenset({b"x-request-timeout-seconds", b"x-request-disconnect-disabled"})
"""Headers Ray Serve's proxy obeys that only the server may set; dropped from every request."""


@dataclass(frozen=True)
class HeaderLimits:
    """What one request's headers may be."""

    max_headers: int = 64
    """Most header lines per request."""
    max_header_bytes: int = 16 * 1024
    """Most bytes of header names and values together per request."""

    def __post_init__(self) -> None:
        for name in ("max_headers", "max_header_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"HeaderLimits.{name} must be a positive integer, got {getattr(self, name)}.")


class RequestGuard:
    """Pure ASGI (no body buffering): checks the header limits, then strips `SERVER_ONLY_HEADERS`."""

    def __init__(self, app: Any, limits: HeaderLimits = HeaderLimits()) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = scope["headers"]
        size = sum(len(name) + len(value) for name, value in headers)
        if len(headers) > self.limits.max_headers or size > self.limits.max_header_bytes:
            detail = (f"The request has {len(headers)} headers of {size:,} bytes, more than the limit of "
                      f"{self.limits.max_headers} headers and {self.limits.max_header_bytes:,} bytes; "
                      "send fewer or shorter headers.")
            await _send_json(send, 431, {"error": "headers_too_large", "detail": detail})
            return
        kept = [(name, value) for name, value in headers if name.lower() not in SERVER_ONLY_HEADERS]
        await self.app({**scope, "headers": kept} if len(kept) < len(headers) else scope, receive, _json_404s(send))


def _json_404s(send: Any) -> Any:
    """`send`, with a plain-text 404 replaced by a JSON one: Ray Serve's proxy answers a path no application
    serves with "Path '<path>' not found", and a URL may carry anything, a pasted token too."""
    replaced = False

    async def guarded(message: dict) -> None:
        nonlocal replaced
        if message["type"] == "http.response.start" and message["status"] == 404 and not any(
                name.lower() == b"content-type" and value.startswith(b"application/json")
                for name, value in message.get("headers", [])):
            replaced = True
            await _send_json(send, 404, {"error": "not_found", "detail": "No application serves this path; "
                                         "GET /-/routes lists the route prefixes."})
        elif not (replaced and message["type"] == "http.response.body"):
            await send(message)

    return guarded


async def _send_json(send: Any, status: int, body: dict) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": payload})
