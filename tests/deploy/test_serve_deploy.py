"""`serve deploy serve/config.yaml` on a Ray head started with the CLI (token auth on) brings its three apps up.

It runs on a cluster of its own: `serve deploy` is declarative and the session's shared cluster
holds applications deployed imperatively with `serve.run`. Only the HTTP address of the config is
changed for the test; Ray starts in a folder whose `.deepsynth/tiny-model` is the session's tiny
model, as it starts in the repo root after `make demo`.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests
import yaml
from conftest import free_port
from deploy_files import kill_cluster, load_yaml

from deepsynth.dashboard import wait_for_dashboard

RAY = str(Path(sys.executable).parent / "ray")
SERVE = str(Path(sys.executable).parent / "serve")


# About 70 s on 2 busy cores (a head of its own, then two applications' replicas): over the default suite's budget.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def deployed(tiny_model_dir, tmp_path_factory):
    """A CLI-started head (token auth, loopback dashboard) with serve/config.yaml deployed on free ports."""
    token = "deepsynth-deploy-" + secrets.token_hex(16)
    api_token = "api-" + secrets.token_hex(16)
    state = tmp_path_factory.mktemp("deploy-state")
    workdir = tmp_path_factory.mktemp("deploy-cwd")
    (workdir / ".deepsynth").mkdir()
    (workdir / ".deepsynth" / "tiny-model").symlink_to(tiny_model_dir)
    temp_dir = tempfile.mkdtemp(prefix="rdep", dir="/tmp")  # short: Ray's socket paths live under it
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, DEEPSYNTH_API_TOKEN=api_token,
               DEEPSYNTH_STATE_DIR=str(state / "state"), DEEPSYNTH_STORAGE=str(state / "runs"))
    gcs_port, dashboard_port, http_port = free_port(), free_port(), free_port()
    log = state / "ray-start.log"
    head_log = log.open("w")
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", "--num-cpus=4", "--temp-dir", temp_dir,
         "--node-ip-address=127.0.0.1", f"--port={gcs_port}", f"--dashboard-port={dashboard_port}",
         "--dashboard-host=127.0.0.1", f"--ray-client-server-port={free_port()}",
         f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
         f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}"],
        cwd=workdir, env=env, start_new_session=True, stdout=head_log, stderr=subprocess.STDOUT,
    )
    try:
        dashboard = f"http://127.0.0.1:{dashboard_port}"
        # Not only /api/version: `serve deploy` right after it once had its connection dropped.
        wait_for_dashboard(dashboard, token=token, timeout_s=120, check_alive=lambda: _check_head(head, log))
        config = load_yaml("serve/config.yaml")
        config["http_options"].update(host="127.0.0.1", port=http_port)
        config_file = state / "config.yaml"
        config_file.write_text(yaml.safe_dump(config))
        deploy = subprocess.run([SERVE, "deploy", str(config_file), "--address", dashboard],
                                cwd=workdir, env=env, capture_output=True, text=True, timeout=120, check=False)
        assert deploy.returncode == 0, deploy.stdout + deploy.stderr
        yield {"url": f"http://127.0.0.1:{http_port}", "dashboard": dashboard, "token": token, "head": head, "log": log}
    finally:
        kill_cluster(head, temp_dir)
        head_log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _auth(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def _check_head(head: subprocess.Popen, log: Path) -> None:
    assert head.poll() is None, f"ray start exited with {head.returncode}:\n{log.read_text()[-3000:]}"


def _wait_for(check, head: subprocess.Popen, log: Path, timeout: float) -> None:
    """Poll `check` until it is true; fail at once if the head died, with the end of its log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _check_head(head, log)
        try:
            if check():
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    raise AssertionError(f"not ready after {timeout} s")


def _ok(url: str) -> bool:
    return requests.get(url, timeout=5).status_code == 200


def _all_up(url: str, status) -> bool:
    apps = status()
    failed = {name: app for name, app in apps.items() if app[0] == "DEPLOY_FAILED"}
    assert not failed, f"Serve could not deploy {failed}"
    # An ingress answers /healthz before the model deployment behind it is up; RUNNING means all are.
    running = len(apps) == 3 and all(app[0] == "RUNNING" for app in apps.values())
    return running and _ok(f"{url}/healthz") and _ok(f"{url}/api/healthz") and _ok(f"{url}/ui/")


def test_serve_deploy_brings_both_apps_up_on_their_routes(deployed):
    url, applications = deployed["url"], f"{deployed['dashboard']}/api/serve/applications/"

    def status() -> dict:
        # What Serve itself reports, through the token-protected dashboard REST API.
        apps = requests.get(applications, headers=_auth(deployed["token"]), timeout=10).json().get("applications", {})
        return {name: (app["status"], app["route_prefix"], app.get("message", "")[-500:]) for name, app in apps.items()}

    try:
        _wait_for(lambda: _all_up(url, status), deployed["head"], deployed["log"], 240)
    except AssertionError as err:
        raise AssertionError(f"{err}; Serve says {status()}") from None
    routes = {name: (state, prefix) for name, (state, prefix, _) in status().items()}
    assert routes == {"summarizer": ("RUNNING", "/"), "jobs": ("RUNNING", "/api"), "console": ("RUNNING", "/ui")}
    assert requests.get(applications, timeout=10).status_code == 401, (
        "the dashboard of a token-auth cluster refuses requests without the token")
