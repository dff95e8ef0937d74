"""`deepsynth export --push-to-hub` against a fake Hub on loopback: the requests, and no token in any output.

The real Hub cannot be reached here. The fake implements the four endpoints huggingface_hub uses
to upload a folder (create repo, validate the card's YAML, preupload, commit) and records them.
"""

import base64
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

TOKEN = "hf_test_secret_token_123"


class FakeHub(BaseHTTPRequestHandler):
    requests: list = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        FakeHub.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        base = f"http://127.0.0.1:{self.server.server_address[1]}"
        if self.path == "/api/repos/create":
            return self.reply({"url": f"{base}/me/summarizer", "name": "me/summarizer"})
        if self.path == "/api/validate-yaml":
            return self.reply({"errors": [], "warnings": []})
        if self.path.endswith("/preupload/main"):
            files = json.loads(body)["files"]
            return self.reply({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                         for f in files], "commitOid": "0" * 40})
        if self.path.endswith("/commit/main"):
            return self.reply({"commitUrl": f"{base}/me/summarizer/commit/{'a' * 40}", "commitOid": "a" * 40})
        self.reply({"error": "not found"}, status=404)

    def reply(self, payload, status=200):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_hub():
    FakeHub.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def run_cli(*args, env):
    deepsynth = str(Path(sys.executable).parent / "deepsynth")
    return subprocess.run([deepsynth, *args], capture_output=True, text=True, timeout=300, env=env)


def test_export_and_push_sends_the_folder_and_never_prints_the_token(fake_hub, lora_checkpoint, tmp_path):
    env = {**os.environ, "HF_TOKEN": TOKEN, "HF_ENDPOINT": fake_hub}
    out = tmp_path / "export"
    result = run_cli("export", str(lora_checkpoint), "--out", str(out), "--push-to-hub", "me/summarizer", env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"{fake_hub}/me/summarizer/commit/" in result.stdout
    assert TOKEN not in result.stdout + result.stderr
    assert not any(TOKEN.encode() in path.read_bytes() for path in out.rglob("*") if path.is_file())

    paths = [r["path"] for r in FakeHub.requests]
    assert paths == ["/api/repos/create", "/api/validate-yaml", "/api/models/me/summarizer/preupload/main",
                     "/api/models/me/summarizer/commit/main"]
    assert all(r["auth"] == f"Bearer {TOKEN}" for r in FakeHub.requests)
    assert json.loads(FakeHub.requests[0]["body"]) == {"name": "summarizer", "organization": "me",
                                                       "visibility": "private"}
    uploaded = {f["path"] for f in json.loads(FakeHub.requests[2]["body"])["files"]}
    assert {"README.md", "adapter_config.json", "adapter_model.safetensors"} <= uploaded
    commit = [json.loads(line) for line in FakeHub.requests[3]["body"].decode().splitlines()]
    files = {entry["value"]["path"]: entry["value"]["content"] for entry in commit if entry["key"] == "file"}
    assert "base_model:" in base64.b64decode(files["README.md"]).decode()


def test_push_without_a_token_says_what_to_do(fake_hub, lora_checkpoint, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "HF_TOKEN"} | {"HF_ENDPOINT": fake_hub}
    result = run_cli("export", str(lora_checkpoint), "--out", str(tmp_path / "x"), "--push-to-hub", "me/s", env=env)
    assert result.returncode == 2
    assert "set HF_TOKEN" in result.stderr and "Traceback" not in result.stderr
    assert FakeHub.requests == []
