"""Bearer-token checks shared by the HTTP applications (the job API, and the summarizer when it asks for one).

The token is read inside the replica, from a file or an environment variable, so it never appears
in a Serve config or the Ray dashboard. A request passes with `Authorization: Bearer <token>`,
compared in constant time; a token, or a token-like parameter, in the URL is refused even when
the header is right, because URLs end up in proxy and access logs.

    token = read_token(args.api_token_file, args.api_token_env, os.environ, "The job API")
    if not bearer_accepted(request, token): ...  # answer 401
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import parse_qsl, unquote

from starlette.requests import Request

MIN_TOKEN_CHARS = 16
# Query parameters that would carry a token in a URL (and so into proxy and access logs).
TOKEN_PARAMS = {"token", "access_token", "api_key", "apikey", "key", "auth", "authorization", "bearer"}


def read_token(token_file: str | None, token_env: str, environ: Mapping[str, str], app: str) -> str:
    """The token from `token_file` if given, else from `environ[token_env]`; raise naming both if it is short."""
    token = Path(token_file).read_text().strip() if token_file else environ.get(token_env, "").strip()
    if len(token) < MIN_TOKEN_CHARS:
        raise ValueError(f"{app} needs a token of at least {MIN_TOKEN_CHARS} characters: set {token_env} in the "
                         "replica's environment or api_token_file to a file holding it.")
    return token


def route_path(request: Request) -> str:
    """The request's path inside its application (without the route prefix it is mounted at)."""
    return scope_path(request.scope)


def scope_path(scope: Mapping) -> str:
    """`route_path` of an ASGI scope."""
    root, path = scope.get("root_path", ""), scope["path"]
    return path[len(root):] if root and path.startswith(root) else path


def bearer_accepted(request: Request, token: str) -> bool:
    """Whether the request carries `Bearer <token>` in its Authorization header and no token in its URL."""
    query = unquote(request.scope.get("query_string", b"").decode("latin-1"))
    in_query = token in query or any(k.lower() in TOKEN_PARAMS for k, _ in parse_qsl(query))
    given = request.headers.get("authorization", "").encode()
    return not in_query and hmac.compare_digest(given, f"Bearer {token}".encode())
