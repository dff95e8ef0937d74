"""Middlewares for Ray Serve's HTTP proxy, which serves both DeepSynth applications on one port.

Ray Serve installs them when every node's environment has
`RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=serve.proxy:middlewares` before `ray start` (the proxy
reads it when it starts). `RequestGuard` then drops the headers that would steer the proxy's own
timeout and disconnect handling and refuses oversized headers before any application sees the
request (docs/serving.md, Security).
"""

from starlette.middleware import Middleware

from deepsynth.serving.guard import RequestGuard


def middlewares() -> list[Middleware]:
    return [Middleware(RequestGuard)]
