"""The web console in a real headless Chromium (Playwright driving the system's Chromium), over the job API, the
summarizer and the console app on the session's Ray cluster, Serve on loopback, with the tiny model.

One module-scoped deployment of the three applications and one browser profile serve every test; the tests run
in order and share one story: a token (a wrong one first), a training job created through the form after Validate
showed a 422 next to its field, its progress bar and loss chart updating, pause with the checkpoint listed, the playground on a 2-page PDF (compared with the paused run's adapter),
clone and a purge; then the upload of a JSONL file, a run trained on it, paused and resumed to the end (its two
Ray jobs take about 2 minutes here). The whole module takes about 4 minutes on top of the session's cluster.
Controls are found by role and label, as a user (or a screen reader) finds them. Every view is screenshotted
under the pytest temp folder; the job page and the playground are copied to docs/images/ for the README.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import time
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import requests
from page_files import pdf_bytes
from ray import serve

from deepsynth.data.corpus import generate_corpus
from deepsynth.data.render import LAYOUTS, render_pages
from serve.console import build_app as build_console
from serve.jobs import build_app as build_jobs
from serve.summarizer import build_app as build_summarizer

PROJECT = Path(__file__).resolve().parents[2]
API_TOKEN = "console-" + secrets.token_hex(16)
CHROMIUM = os.environ.get("DEEPSYNTH_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
# Headless and quiet: nothing of Chromium's own reaches the network (updates, sync, QUIC probes).
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
APPS = ("console-jobs", "console-summarizer", "console-ui")
DATASET = "uploaded-notes"
PAUSED_STEPS = 40  # the default flow pauses long before the end
STEPS = 12  # the slow flow runs to the end
TIMEOUT_MS = 240_000


@pytest.fixture(scope="module")
def servers(ray_cluster, serve_url, tiny_model_dir, tmp_path_factory):
    """The job API at /api, the summarizer at / (asking for the same token) and the console at /ui."""
    root = tmp_path_factory.mktemp("console")
    token_file = root / "api-token"
    token_file.write_text(API_TOKEN)
    jobs = {"state_dir": str(root / "state"), "storage": str(root / "storage"), "api_token_file": str(token_file),
            "ray_dashboard_url": ray_cluster.dashboard_url, "model_roots": [str(Path(tiny_model_dir).parent)],
            "max_workers": 1, "rate_burst": 40, "failed_logins_per_minute": 1000}
    summarizer = {"model": str(tiny_model_dir), "device": "cpu", "api_token_file": str(token_file), "max_pages": 4,
                  "default_max_new_tokens": 8, "max_new_tokens_limit": 16, "num_cpus": 0.5, "ingress_num_cpus": 0.25}
    serve.run(build_jobs(jobs), name=APPS[0], route_prefix="/api")
    serve.run(build_console({}), name=APPS[2], route_prefix="/ui")
    # The summarizer is deployed by the playground test, with the adapter the console's training job wrote.
    yield {"url": serve_url, "root": root, "model": str(tiny_model_dir), "summarizer": summarizer}
    for name in APPS:
        serve.delete(name)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not CHROMIUM:
        pytest.skip("No Chromium for the console's browser tests: install it with `sudo apt-get install -y chromium` "
                    "(`make test` does when run as root with apt), or point DEEPSYNTH_CHROMIUM at one.")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # A fresh profile: no state from an earlier run, no stored token.
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM, args=CHROMIUM_ARGS,
            headless=True, viewport={"width": 1280, "height": 900}, locale="en-GB", timezone_id="Europe/Berlin")
        context.set_default_timeout(30_000)
        yield context
        context.close()


@pytest.fixture(scope="module")
def ui(servers, browser, tmp_path_factory):
    """One tab on the console, every request it makes and every script error, and a screenshot helper."""
    page = browser.pages[0] if browser.pages else browser.new_page()
    seen, errors = [], []
    page.on("request", lambda request: seen.append(request.url))
    page.on("pageerror", lambda err: errors.append(str(err)))
    shots = tmp_path_factory.mktemp("screenshots")

    def shot(name: str) -> Path:
        path = shots / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    page.goto(servers["url"] + "/ui")
    yield {"page": page, "seen": seen, "errors": errors, "shot": shot, "state": {}, **servers}
    assert not errors, f"script errors in the page: {errors}"
    outside = [url for url in seen if not url.startswith(servers["url"] + "/") and not url.startswith("data:")]
    assert not outside, f"the console fetched from outside the server: {outside}"


def _auth() -> dict:
    return {"Authorization": f"Bearer {API_TOKEN}"}


def test_the_console_is_served_with_a_strict_policy(servers):
    redirect = requests.get(servers["url"] + "/ui", allow_redirects=False, timeout=10)
    assert redirect.status_code in (307, 308) and redirect.headers["location"].endswith("/ui/")
    page = requests.get(servers["url"] + "/ui/", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "connect-src 'self'" in policy and "default-src 'none'" in policy
    module = requests.get(servers["url"] + "/ui/console.js", timeout=10)
    assert module.headers["content-type"].startswith("text/javascript") and "export async function send(" in module.text
    missing = requests.get(servers["url"] + "/ui/../api/jobs", timeout=10)
    assert missing.status_code in (401, 404)
    assert requests.get(servers["url"] + "/ui/secrets.txt", timeout=10).json()["error"]["type"] == "not_found"


def test_a_wrong_token_is_refused_and_the_right_one_kept_for_the_tab(ui):
    page = ui["page"]
    status = page.get_by_role("status").filter(has_text="token").first
    assert "No API token" in page.locator("#token-status").inner_text()
    page.get_by_label("API token", exact=True).fill("wrong-" + API_TOKEN)
    page.get_by_role("button", name="Save token").click()
    page.get_by_text("Wrong token: the job API answered 401").wait_for()
    assert page.get_by_label("API token", exact=True).get_attribute("aria-invalid") == "true"
    assert page.evaluate("sessionStorage.getItem('deepsynth.apiToken')") is None
    assert page.evaluate("document.cookie") == ""
    ui["shot"]("token-wrong")

    page.get_by_label("API token", exact=True).fill(API_TOKEN)
    page.get_by_role("button", name="Save token").click()
    page.get_by_text("Token accepted").wait_for()
    assert status.is_visible()
    page.get_by_text("No jobs yet").wait_for()
    assert page.get_by_label("API token", exact=True).input_value() == "", "the field does not keep showing it"
    assert API_TOKEN not in page.url and page.evaluate("document.cookie") == ""
    ui["shot"]("jobs-empty")


def fill_train_form(page, model: str, steps: int, lr: str = "0.003", dataset: str | None = None) -> None:
    """The New job form for a tiny cpu_smoke run: main fields, and the rest in the advanced JSON box."""
    page.get_by_label("Job type").select_option("train")
    page.get_by_label("Preset", exact=True).select_option("cpu_smoke")
    if dataset is not None:
        page.get_by_label("Dataset", exact=True).fill(dataset)
    page.get_by_label("Learning rate").fill(lr)
    page.get_by_label("Max steps").fill(str(steps))
    page.get_by_label("Batch size").fill("2")
    page.get_by_label("Workers").fill("1")
    page.get_by_label("Advanced overrides (JSON)").fill(json.dumps(
        {"model": model, "eval_every": 3, "log_every": 1, "train_limit": 16, "val_limit": 2}))


def create_job(page) -> str:
    """Click Create job until it is created (as a user would): right after the cluster starts, Ray Jobs may have
    no agent yet, which the API answers with a 503 the form shows. Each click resends the same Idempotency-Key."""
    error = page.locator("#form-error")
    deadline = time.monotonic() + 90
    while True:
        page.get_by_role("button", name="Create job", exact=True).click()
        page.wait_for_function("() => location.hash.startsWith('#/jobs/job-') || "
                               "document.querySelector('#form-error')?.textContent", timeout=60_000)
        if page.url.split("#")[-1].startswith("/jobs/job-"):
            return page.url.rsplit("/", 1)[1]
        assert error.inner_text().startswith("503 ray_unavailable") and time.monotonic() < deadline, error.inner_text()
        time.sleep(3)


def watch_progress_then_pause(page, steps: int) -> int:
    """Wait for the progress bar to move and the loss chart to grow, pause, and return the step it paused at."""
    progress = page.get_by_role("progressbar", name=re.compile(r"^Progress: step"))
    progress.wait_for(timeout=TIMEOUT_MS)
    page.wait_for_function("() => Number(document.querySelector('progress[aria-label^=\"Progress: step\"]')?.value) >= 1",
                           timeout=TIMEOUT_MS)
    loss = page.get_by_role("img", name=re.compile(r"^Loss: \d+ points"))
    loss.wait_for()
    first_points = int(loss.get_attribute("data-points"))
    page.wait_for_function("n => Number(document.querySelector('[aria-label^=\"Loss: \"]')?.dataset.points) > n",
                           arg=first_points, timeout=TIMEOUT_MS)
    assert int(progress.get_attribute("value")) >= 2 and progress.get_attribute("max") == str(steps)
    assert page.get_by_role("img", name=re.compile(r"^Learning rate: \d+ points")).count() == 1

    pause = page.get_by_role("button", name="Pause", exact=True)
    assert pause.is_enabled() and page.get_by_role("button", name="Resume", exact=True).is_disabled()
    pause.click()
    page.locator(".status-paused").first.wait_for(timeout=TIMEOUT_MS)
    checkpoints = page.get_by_role("table", name="Checkpoints")
    checkpoints.wait_for()
    stopped_at = int(checkpoints.get_by_role("row").last.get_by_role("cell").first.inner_text())
    assert 1 <= stopped_at < steps
    page.get_by_text(f"step {stopped_at}", exact=True).wait_for()  # "Resumes from"
    assert pause.is_disabled() and page.get_by_role("button", name="Resume", exact=True).is_enabled()
    return stopped_at


def test_create_a_training_job_after_validate_shows_a_422_next_to_its_field(ui):
    page = ui["page"]
    page.get_by_role("link", name="New job").click()
    fill_train_form(page, ui["model"], PAUSED_STEPS, lr="-1")
    page.get_by_role("button", name="Validate", exact=True).click()
    lr = page.get_by_label("Learning rate")
    page.locator("#field-lr-error").filter(has_text="lr").wait_for()
    assert lr.get_attribute("aria-invalid") == "true" and lr.get_attribute("aria-describedby") == "field-lr-error"
    assert page.locator("#field-max_steps-error").inner_text() == "", "only the bad field is marked"
    ui["shot"]("new-job-422")

    lr.fill("0.003")
    page.get_by_role("button", name="Validate", exact=True).click()
    page.get_by_text("Valid train job on preset cpu_smoke").wait_for()
    command = page.get_by_label("Command", exact=True).inner_text()
    assert "ray_jobs.train" in command and "lr=0.003" in command and f"max_steps={PAUSED_STEPS}" in command, command
    assert lr.get_attribute("aria-invalid") is None
    page.get_by_role("button", name="Copy Create job as curl").click()
    curl = page.get_by_label("curl for Create job").inner_text()
    assert "Idempotency-Key" in curl and "$DEEPSYNTH_API_TOKEN" in curl and API_TOKEN not in curl
    ui["shot"]("new-job")
    ui["state"]["job"] = create_job(page)


def test_progress_bar_and_loss_chart_update_then_pause_with_its_checkpoint_listed(ui):
    page, job_id = ui["page"], ui["state"]["job"]
    watch_progress_then_pause(page, PAUSED_STEPS)
    # Timestamps in the browser's locale and zone (the context is en-GB in Europe/Berlin).
    created = datetime.fromtimestamp(requests.get(f"{ui['url']}/api/jobs/{job_id}", headers=_auth(), timeout=10)
                                     .json()["created"], ZoneInfo("Europe/Berlin"))
    page.get_by_text(f"{created:%d/%m/%Y, %H:%M:%S}", exact=True).wait_for()
    screenshot = ui["shot"]("job")
    (PROJECT / "docs" / "images").mkdir(exist_ok=True)
    shutil.copy(screenshot, PROJECT / "docs" / "images" / "console-job.png")

    page.get_by_role("link", name="Jobs", exact=True).click()
    row = page.get_by_role("table", name="Jobs").get_by_role("row").filter(has_text=job_id)
    row.get_by_text("paused").wait_for()
    assert row.get_by_role("progressbar").count() == 1
    page.get_by_label("Filter by status").select_option("running")
    page.get_by_text("No job matches these filters.").wait_for()
    page.get_by_label("Filter by status").select_option("")
    page.get_by_label("Filter by type").select_option("train")
    row.wait_for()
    ui["shot"]("jobs")


def test_playground_summarizes_a_two_page_pdf_with_usage_and_page_previews(ui):
    page, job_id = ui["page"], ui["state"]["job"]
    job = requests.get(f"{ui['url']}/api/jobs/{job_id}", headers=_auth(), timeout=10).json()
    # The paused run's checkpoint is a LoRA adapter of the served model: compare the two side by side.
    serve.run(build_summarizer({**ui["summarizer"], "adapters": {"trained": job["checkpoints"][-1]["path"]}}),
              name=APPS[1], route_prefix="/")
    page.get_by_role("link", name="Playground").click()
    page.get_by_text("Serving ").wait_for()
    page.get_by_label("Compare with").select_option("trained")
    docs = generate_corpus("test", 2, seed=5)
    pdf = pdf_bytes([render_pages(d["text"], LAYOUTS["ocr2-page"])[0] for d in docs])
    page.get_by_label("PDF or page images").set_input_files(
        {"name": "two-pages.pdf", "mimeType": "application/pdf", "buffer": pdf})
    page.get_by_label("Max new tokens").fill("8")
    page.get_by_role("button", name="Summarize", exact=True).click()
    for title in ("Base model", "Adapter trained"):
        summary = page.get_by_label(f"Summary ({title})")
        summary.wait_for(timeout=120_000)
        usage = page.get_by_label(f"Usage ({title})").inner_text()
        assert re.search(r"Pages\s+2\b", usage) and re.search(r"Visual tokens\s+\d+", usage), usage
        # A tiny model may well end at once: the page says so rather than showing nothing.
        generated = int(re.search(r"Summary tokens\s+(\d+)", usage).group(1))
        assert (summary.inner_text() == "(empty summary)") == (generated == 0), (title, summary.inner_text(), usage)
        previews = page.get_by_role("group", name=f"Page previews ({title})").get_by_role("img")
        assert previews.count() == 2, title
        for i in range(2):
            assert previews.nth(i).evaluate("img => img.complete && img.naturalWidth > 0"), f"page {i + 1} decodes"
    screenshot = ui["shot"]("playground")
    shutil.copy(screenshot, PROJECT / "docs" / "images" / "console-playground.png")


def test_clone_then_delete_a_job_with_purge(ui):
    from playwright.sync_api import expect

    page, job_id = ui["page"], ui["state"]["job"]
    run_dir = ui["root"] / "storage" / "runs" / job_id
    assert run_dir.is_dir()
    page.goto(f"{ui['url']}/ui/#/jobs/{job_id}")
    page.locator(".status-paused").first.wait_for()
    page.get_by_role("button", name="Clone as new job").click()
    expect(page.get_by_label("Max steps")).to_have_value(str(PAUSED_STEPS))
    assert page.get_by_label("Preset", exact=True).input_value() == "cpu_smoke"
    assert json.loads(page.get_by_label("Advanced overrides (JSON)").input_value())["model"] == ui["model"]
    page.go_back()
    page.locator(".status-paused").first.wait_for()
    page.get_by_label("Purge its files too").check()
    page.get_by_role("button", name="Delete", exact=True).click()
    dialog = page.get_by_role("dialog")
    assert "cannot be undone" in dialog.inner_text()
    dialog.get_by_role("button", name="Cancel").click()
    assert run_dir.is_dir(), "cancel deletes nothing"
    page.get_by_role("button", name="Delete", exact=True).click()
    page.get_by_role("dialog").get_by_role("button", name="Delete and purge").click()
    page.get_by_text(f"Deleted {job_id}; purged").wait_for()
    assert not run_dir.exists()
    assert requests.get(f"{ui['url']}/api/jobs/{job_id}", headers=_auth(), timeout=10).status_code == 404


# Two Ray jobs of its own, a prepare and a train run paused and resumed: about 2 minutes, in the default
# suite all the same, because CI must run every flow of the console.
def test_upload_a_jsonl_dataset_train_on_it_pause_and_resume_to_the_end(ui):
    page = ui["page"]
    page.goto(f"{ui['url']}/ui/#/datasets")
    if not page.evaluate("sessionStorage.getItem('deepsynth.apiToken')"):  # run alone (pytest -k)
        page.get_by_label("API token", exact=True).fill(API_TOKEN)
        page.get_by_role("button", name="Save token").click()
        page.get_by_text("Token accepted").wait_for()
    page.get_by_role("table", name="Benchmark presets").get_by_text("cnn_dailymail").first.wait_for()
    rows = [{"body": d["text"], "headline": d["summary"]} for d in generate_corpus("train", 24, seed=11)]
    page.get_by_label("Dataset file").set_input_files(
        {"name": "notes.jsonl", "mimeType": "application/json", "buffer": "\n".join(map(json.dumps, rows)).encode()})
    page.get_by_label("Dataset name").fill(DATASET)
    page.get_by_label("Text column").fill("text")  # wrong: the file's column is "body"
    page.get_by_label("Summary column").fill("headline")
    page.get_by_label("Validation rows").fill("4")
    page.get_by_label("Prepare settings (JSON)").fill(json.dumps({"model": ui["model"]}))
    page.get_by_role("button", name="Upload dataset", exact=True).click()
    page.get_by_text("Upload refused: 422").wait_for()
    assert "text" in page.locator("#upload-text-field-error").inner_text()
    page.get_by_label("Text column").fill("body")
    deadline = time.monotonic() + 90
    while True:  # as in create_job: Ray Jobs may have no agent yet right after the cluster starts
        page.get_by_role("button", name="Upload dataset", exact=True).click()
        page.get_by_text(re.compile(r"^(Uploaded|Upload refused): ")).wait_for(timeout=60_000)
        if page.get_by_text("Upload refused: 503 ray_unavailable").count() == 0 or time.monotonic() > deadline:
            break
        time.sleep(3)
    page.get_by_text(f"Uploaded: prepared:{DATASET} (20 train, 4 validation)").wait_for()
    uploads = page.get_by_role("table", name="Uploads")
    uploads.get_by_role("row").filter(has_text=DATASET).locator(".status-ready").wait_for(timeout=TIMEOUT_MS)
    generated = page.get_by_role("table", name="Generated datasets").get_by_role("row").filter(has_text=DATASET)
    generated.wait_for(timeout=20_000)
    cells = generated.get_by_role("cell").all_inner_texts()
    assert cells[3] == "train 20, validation 4" and cells[4] == "24" and int(re.sub(r"\D", "", cells[7])) > 0, cells
    ui["shot"]("datasets")

    from playwright.sync_api import expect

    uploads.get_by_role("button", name=f"Train on prepared:{DATASET}").click()
    expect(page.get_by_label("Dataset", exact=True)).to_have_value(f"prepared:{DATASET}")  # prefilled
    fill_train_form(page, ui["model"], STEPS)
    create_job(page)
    stopped_at = watch_progress_then_pause(page, STEPS)
    page.get_by_role("button", name="Resume", exact=True).click()
    page.locator(".status-succeeded").first.wait_for(timeout=TIMEOUT_MS)
    page.get_by_text(f"step {STEPS} of {STEPS}").first.wait_for()
    page.get_by_role("img", name=re.compile(rf"^Validation loss: \d+ points.* at step {STEPS}$")).wait_for()
    page.wait_for_function("() => document.querySelector('[aria-label=\"Log tail\"]').textContent.includes('attempt 2')")
    log = page.get_by_label("Log tail").inner_text()
    assert f"step {STEPS}/{STEPS}" in log and f"step {stopped_at + 1}/{STEPS}" in log.split("attempt 2")[1]
    assert page.get_by_role("button", name="Pause", exact=True).is_disabled()
    assert page.get_by_role("button", name="Resume", exact=True).is_disabled()
    ui["shot"]("job-resumed")


def test_narrow_screens_keyboard_and_an_unreachable_api(ui):
    page = ui["page"]
    page.set_viewport_size({"width": 390, "height": 844})
    for view in ("#/jobs", "#/new", "#/datasets", "#/playground"):
        page.goto(f"{ui['url']}/ui/{view}")
        page.wait_for_load_state("networkidle")
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"{view} scrolls sideways at 390 px ({width} px)"
    ui["shot"]("playground-390px")
    page.goto(f"{ui['url']}/ui/#/jobs")
    page.reload()
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    for _ in range(5):
        page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "token-input", "nav links, then the token field"
    page.set_viewport_size({"width": 1280, "height": 900})

    # The API going away (the browser's requests fail) shows an error in place; the page keeps working.
    page.route("**/api/**", lambda route: route.abort("connectionrefused"))
    page.get_by_role("button", name="Refresh", exact=True).click()
    page.get_by_text("Could not list jobs: Cannot reach the server").wait_for()
    page.get_by_role("link", name="New job").click()
    page.get_by_text("Could not load presets").wait_for()
    ui["shot"]("api-down")
    page.unroute("**/api/**")
    page.get_by_role("link", name="Jobs", exact=True).click()
    page.get_by_text(re.compile(r"^Updated ")).wait_for()  # listed again
    assert page.get_by_text("Cannot reach the server").count() == 0
    assert page.get_by_role("row").filter(has_text=ui["state"]["job"]).count() == 0, "the purged job is gone"
