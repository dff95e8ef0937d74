"""A minute of mixed traffic against the demo's deployment: valid summaries keep coming, and nothing is a 5xx.

Both applications of serve/config.yaml, with the demo's changes (a public summarizer, the job API
behind a token file), on the shared test cluster. 32 clients send valid requests (text, PNG, PDF)
and malicious ones for 60 s, at most MAX_REQUESTS in all: an overlong word, a corrupt image, a
huge header, a client timeout header, NaN in a job request, wrong tokens.
"""

import random
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import yaml
from page_files import pdf_bytes, png_bytes, png_with_garbage_exif
from ray import serve

from deepsynth.data.render import LAYOUTS, render_pages
from serve.jobs import build_app as build_jobs
from serve.summarizer import build_app as build_summarizer

pytestmark = pytest.mark.slow  # a minute of load plus start-up: about 3 minutes

DURATION_S = 60
CONCURRENCY = 32
MAX_REQUESTS = 3000
PROJECT = Path(__file__).resolve().parents[2]
TEXT = "Rail traffic in inland towns fell 2.1 percent in the third quarter as freight moved to the coast."


@pytest.fixture(scope="module")
def demo(ray_cluster, serve_url, tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("load")
    token_file = root / "api-token"
    token_file.write_text("load-test-token-0123456789")
    spec = yaml.safe_load((PROJECT / "serve" / "config.yaml").read_text())
    apps = {app["name"]: app for app in spec["applications"]}
    summarizer = {k: v for k, v in apps["summarizer"]["args"].items() if k not in ("model", "api_token_env")}
    jobs = {**apps["jobs"]["args"], "api_token_file": str(token_file), "state_dir": str(root / "state"),
            "storage": str(root / "storage"), "ray_dashboard_url": ray_cluster.dashboard_url}
    serve.run(build_summarizer({**summarizer, "model": str(tiny_model_dir)}), name="load-summarizer",
              route_prefix="/")
    serve.run(build_jobs(jobs), name="load-jobs", route_prefix="/api")
    yield serve_url
    serve.delete("load-summarizer")
    serve.delete("load-jobs")


def test_a_minute_of_mixed_valid_and_malicious_traffic(demo):
    page = render_pages(TEXT, LAYOUTS["ocr2-page"])[0]
    valid = {
        "text": lambda: {"json": {"text": TEXT, "max_new_tokens": 8}},
        "png": lambda: {"files": [("file", ("p.png", png_bytes(page), "image/png"))], "data": {"max_new_tokens": "8"}},
        "pdf": lambda: {"files": [("file", ("d.pdf", pdf_bytes([page, page]), "application/pdf"))],
                        "data": {"max_new_tokens": "8"}},
    }
    summarize = f"{demo}/v1/summarize"
    malicious = {
        "overlong word": ("POST", summarize, {"json": {"text": "x" * 2000, "max_new_tokens": 4}}),
        "garbage eXIf": ("POST", summarize, {"files": [("file", ("p.png", png_with_garbage_exif(), "image/png"))]}),
        "1 MiB header": ("POST", summarize, {"json": {"text": TEXT}, "headers": {"X-Padding": "a" * 2**20}}),
        "client timeout header": ("POST", summarize, {"json": {"text": TEXT, "max_new_tokens": 4},
                                                      "headers": {"x-request-timeout-seconds": "0.001"}}),
        "NaN in a job": ("POST", f"{demo}/api/jobs", {"data": '{"type": "train", "preset": "cpu_smoke", '
                                                              '"overrides": {"weight_decay": NaN}}',
                                                      "headers": {"Authorization": "Bearer load-test-token-0123456789",
                                                                  "Content-Type": "application/json"}}),
        "wrong token": ("GET", f"{demo}/api/jobs", {"headers": {"Authorization": "Bearer wrong"}}),
        # (A false Content-Length needs a raw socket, which requests cannot send: tests/jobs/test_jobs_hardening.py.)
    }
    for kind, make in valid.items():  # warm-up: the first generate compiles and allocates
        assert requests.post(summarize, timeout=120, **make()).status_code == 200, kind

    lock = threading.Lock()
    results: list[tuple[str, bool, int, float]] = []  # (kind, valid, status, seconds)
    deadline = time.monotonic() + DURATION_S
    rng = random.Random(0)

    def client(seed: int) -> None:
        local = random.Random(seed)
        while time.monotonic() < deadline:
            with lock:
                if len(results) >= MAX_REQUESTS:
                    return
            if local.random() < 0.5:
                kind = local.choice(sorted(valid))
                method, url, kwargs, is_valid = "POST", summarize, valid[kind](), True
            else:
                kind = local.choice(sorted(malicious))
                (method, url, kwargs), is_valid = malicious[kind], False
            started = time.monotonic()
            try:
                status = requests.request(method, url, timeout=60, **kwargs).status_code
            except requests.RequestException:
                status = 0  # the server dropped the connection, which a bad request may earn, a valid one not
            with lock:
                results.append((kind, is_valid, status, time.monotonic() - started))

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        for future in [pool.submit(client, rng.randrange(2**32)) for _ in range(CONCURRENCY)]:
            future.result()

    good = [r for r in results if r[1]]
    bad = [r for r in results if not r[1]]
    succeeded = [r for r in good if r[2] == 200]
    latencies = sorted(r[3] for r in succeeded)
    p99 = latencies[int(0.99 * (len(latencies) - 1))]
    print(f"\n{len(results)} requests in {DURATION_S} s at concurrency {CONCURRENCY}: {len(good)} valid "
          f"({len(succeeded)} succeeded, p50 {statistics.median(latencies):.2f} s, p99 {p99:.2f} s), {len(bad)} "
          f"malicious; statuses of the malicious: {sorted({(r[0], r[2]) for r in bad})}")
    assert len(good) > 100 and len(bad) > 100
    assert len(succeeded) >= 0.99 * len(good), sorted({(r[0], r[2]) for r in good if r[2] != 200})
    assert not [r for r in results if r[2] >= 500], sorted({(r[0], r[2]) for r in results if r[2] >= 500})
    assert all(400 <= r[2] < 500 or (r[0] in ("overlong word", "client timeout header") and r[2] == 200)
               for r in bad), sorted({(r[0], r[2]) for r in bad})
    assert requests.get(f"{demo}/healthz", timeout=5).status_code == 200
