"""wait_for_dashboard against a real HTTP server on loopback that plays a dashboard whose modules start late."""

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from deepsynth.dashboard import DashboardNotReady, wait_for_dashboard


class Dashboard:
    """Answers /api/version at once; drops the Serve module's first `serve_drops` connections unanswered."""

    def __init__(self, serve_drops: int, serve_status: int = 200):
        self.requests: list[tuple[str, str | None]] = []
        self.serve_drops, self.serve_status = serve_drops, serve_status
        dashboard = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                dashboard.requests.append((self.path, self.headers.get("Authorization")))
                if self.path == "/api/serve/applications/" and dashboard.serve_drops > 0:
                    dashboard.serve_drops -= 1
                    self.close_connection = True  # what a client sees as RemoteDisconnected
                    return
                status = dashboard.serve_status if self.path == "/api/serve/applications/" else 200
                self.send_response(status)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def dashboard_factory():
    made = []

    def make(**kwargs) -> Dashboard:
        made.append(Dashboard(**kwargs))
        return made[-1]

    yield make
    for dashboard in made:
        dashboard.close()


def test_it_waits_past_dropped_connections_until_serve_and_jobs_answer(dashboard_factory):
    dashboard = dashboard_factory(serve_drops=3)
    wait_for_dashboard(dashboard.url, token="t0k", timeout_s=20, poll_s=0.05)
    paths = [path for path, _ in dashboard.requests]
    assert paths == ["/api/version"] + ["/api/serve/applications/"] * 4 + ["/api/jobs/"]
    assert {auth for _, auth in dashboard.requests} == {"Bearer t0k"}


def test_a_module_that_never_answers_is_a_bounded_wait_with_an_error_naming_it(dashboard_factory):
    dashboard = dashboard_factory(serve_drops=0, serve_status=401)
    with pytest.raises(DashboardNotReady, match=r"its Serve module at .*/api/serve/applications/ did not answer "
                                                r"within 1 s \(last: HTTP 401\).*the token is the cluster's"):
        wait_for_dashboard(dashboard.url, timeout_s=1, poll_s=0.05)
    assert "/api/jobs/" not in [path for path, _ in dashboard.requests]


def test_check_alive_stops_the_wait_at_once():
    def head_exited():
        raise RuntimeError("the head exited")

    with pytest.raises(RuntimeError, match="the head exited"):
        wait_for_dashboard("http://127.0.0.1:9", timeout_s=60, check_alive=head_exited)
