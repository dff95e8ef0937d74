"""Readiness of a Ray cluster's dashboard REST API, before `serve deploy` or `ray job submit` use it.

The dashboard answers `/api/version` as soon as its HTTP server is up, but its Serve and Jobs
modules run in subprocesses of their own that start later; a request sent to them before then can
have its connection dropped (`RemoteDisconnected`). `wait_for_dashboard` polls one read-only route
of each module until it answers 200, within a bounded time, and says which one did not.

    wait_for_dashboard("http://127.0.0.1:8265", token=ray_token, timeout_s=180, check_alive=head_is_running)
"""

from __future__ import annotations

import time
from typing import Callable

import requests

# What must answer, in order: the HTTP server, then each module `serve deploy` and Ray Jobs talk to.
READINESS_ROUTES = {
    "the dashboard": "/api/version",
    "its Serve module": "/api/serve/applications/",
    "its Jobs module": "/api/jobs/",
}


class DashboardNotReady(TimeoutError):
    """A dashboard route did not answer 200 in time."""


def wait_for_dashboard(
    url: str,
    *,
    token: str | None = None,
    timeout_s: float = 180.0,
    poll_s: float = 1.0,
    check_alive: Callable[[], None] = lambda: None,
) -> None:
    """Return once every route of READINESS_ROUTES answers 200; raise DashboardNotReady after `timeout_s`.

    `token` is the cluster's Ray auth token, sent as a bearer token. `check_alive` is called before
    each try, so a caller can raise at once when the head it started has exited.
    """
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    deadline = time.monotonic() + timeout_s
    for what, route in READINESS_ROUTES.items():
        last = "no answer"
        while True:
            check_alive()
            try:
                answer = requests.get(url.rstrip("/") + route, headers=headers, timeout=5)
                if answer.status_code == 200:
                    break
                last = f"HTTP {answer.status_code}"
            except requests.RequestException as err:  # not listening yet, or the module's subprocess is starting
                last = type(err).__name__
            if time.monotonic() >= deadline:
                raise DashboardNotReady(
                    f"{what} at {url}{route} did not answer within {timeout_s:.0f} s (last: {last}); "
                    "check the head's logs (<ray temp dir>/session_latest/logs/dashboard*.log)"
                    + (", and that the token is the cluster's" if last == "HTTP 401" else "") + "."
                )
            time.sleep(poll_s)
