"""The web console: a Ray Serve application serving one HTML page, one ES module and one stylesheet at `/ui`.

    serve run serve.console:build_app          # or `name: console` in serve/config.yaml (route_prefix /ui)

The files are package data (`deepsynth/console/`), read once when the replica starts; there is no
build step and the page loads nothing from outside the server. The page is public, like any login
page: it holds no data and no secret. Everything it shows comes from the job API and the summarizer,
which it calls from the browser with the bearer token the user pastes (kept in sessionStorage, sent
only as a header, so there are no cookies and no CSRF surface). `api_prefix` and `summarizer_prefix`
say where those two applications are mounted; the page reads them from its `<meta>` tags.
"""

from __future__ import annotations

import re
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve import Application
from starlette.exceptions import HTTPException as StarletteHTTPException

import deepsynth
from deepsynth.logs import serve_logging_config

# From the installed package (its package data), not from beside this file: `serve/` is not installed.
CONSOLE_DIR = Path(deepsynth.__file__).resolve().parent / "console"
FILES = {"console.js": "text/javascript; charset=utf-8", "console.css": "text/css; charset=utf-8"}
# Same-origin only: the module, the stylesheet and API calls come from this server; page previews are data: URLs.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
PREFIX = re.compile(r"^(/[A-Za-z0-9._~-]+)*$")


class ConsoleArgs(BaseModel):
    """Arguments of `build_app` (`args:` of the console in serve/config.yaml)."""

    model_config = ConfigDict(extra="forbid")

    api_prefix: str = Field("/api", pattern=PREFIX.pattern)
    """Where the job API is mounted on the same server (its route_prefix)."""
    summarizer_prefix: str = Field("", pattern=PREFIX.pattern)
    """Where the summarizer is mounted ("" for `/`, its route_prefix in serve/config.yaml)."""
    log_format: str = Field("text", pattern="^(text|json)$")


def console_page(args: ConsoleArgs) -> str:
    """The HTML page with the API prefixes filled into its `<meta>` tags."""
    html = (CONSOLE_DIR / "index.html").read_text()
    html = html.replace('name="deepsynth-api" content="/api"', f'name="deepsynth-api" content="{args.api_prefix}"')
    return html.replace('name="deepsynth-summarizer" content=""',
                        f'name="deepsynth-summarizer" content="{args.summarizer_prefix}"')


def create_console(args: ConsoleArgs) -> FastAPI:
    """The FastAPI app serving the console's three files; every other path is a JSON 404."""
    page = console_page(args)
    assets = {name: (CONSOLE_DIR / name).read_bytes() for name in FILES}
    app = FastAPI(title="DeepSynth console", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "invalid_request")
        return JSONResponse({"error": {"type": kind, "message": str(exc.detail)}}, status_code=exc.status_code)

    @app.get("/")
    def index() -> Response:
        # Starlette redirects `/ui` to `/ui/`, so the page's relative console.js resolves under the prefix.
        return Response(page, media_type="text/html; charset=utf-8", headers=SECURITY_HEADERS)

    @app.get("/{name}")
    def asset(name: str) -> Response:
        if name not in FILES:
            raise StarletteHTTPException(404, "Not Found")
        return Response(assets[name], media_type=FILES[name], headers=SECURITY_HEADERS)

    return app


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0})
@serve.ingress()
class Console:
    def __init__(self, args: dict):
        self.args = ConsoleArgs(**args)

    def __serve_build_asgi_app__(self):
        return create_console(self.args)


def build_app(args: dict) -> Application:
    """The console application; `args` are `ConsoleArgs`, checked here so a typo fails at deploy time."""
    parsed = ConsoleArgs(**args)
    return Console.options(logging_config=serve_logging_config(parsed.log_format)).bind(dict(args))
