"""Every command block of README.md, run as written, in order, in a fresh copy of the checkout.

The HTML comment before each fenced block says how it runs (README.md, "Tests", lists the markers):
`demo` blocks while the demo's cluster is up (the first one, `make demo`, starts it), `local` blocks
after the test has stopped that cluster, `local serve` blocks with their first command serving in
the background, and `skip <reason>` blocks not at all. Commands keep the README's fixed ports
(6379, 8265, 8000, and Ray's 52365 and 10001), so when something else holds one the test waits up
to 5 minutes, then skips; it never stops anything it did not start. A failing command names
itself in the block's log, which the failure message shows.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from fresh_checkout import ROOT, FreshCheckout, ports_in_use
from PIL import Image, ImageDraw

MARKER = re.compile(r"<!--\s*readme-test:\s*(.*?)\s*-->")
FENCE = re.compile(r"^```(\w*)\s*$")
MODES = ("demo", "local", "local serve")
DEMO_PORTS = {6379: "the demo's Ray GCS", 8265: "the Ray dashboard", 8000: "Ray Serve HTTP",
              52365: "Ray's dashboard agent", 10001: "Ray's client server"}
BLOCK_TIMEOUT_S = 1500
PORT_WAIT_S = 300
# The shell every block runs in: stop at the first failing command and say which one it was.
PRELUDE = "set -o pipefail\ntrap 'echo \"README command failed (exit $?): $BASH_COMMAND\" >&2' ERR\n"


@dataclass
class Block:
    line: int
    language: str
    marker: str | None
    text: str

    def where(self) -> str:
        return f"README.md:{self.line} ({self.marker})"


def readme_blocks(text: str) -> list[Block]:
    """The fenced blocks of a Markdown text (diagrams excepted), with the marker comment before each."""
    blocks, lines, previous, i = [], text.splitlines(), "", 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if fence and fence.group(1) != "mermaid":
            start, i = i, i + 1
            while not lines[i].startswith("```"):
                i += 1
            marker = MARKER.fullmatch(previous.strip())
            blocks.append(Block(start + 1, fence.group(1), marker.group(1) if marker else None,
                                "\n".join(lines[start + 1:i])))
        elif fence:  # a diagram: skip to its end
            i += 1
            while not lines[i].startswith("```"):
                i += 1
        if lines[i].strip():
            previous = lines[i]
        i += 1
    return blocks


def first_command(text: str) -> tuple[str, str]:
    """A block's first command (with its continuation lines) and the rest of the block."""
    lines = text.split("\n")
    end = 0
    while lines[end].rstrip().endswith("\\"):
        end += 1
    return "\n".join(lines[:end + 1]), "\n".join(lines[end + 1:])


def test_every_block_of_the_readme_is_marked_and_runnable_ones_are_bash():
    blocks = readme_blocks((ROOT / "README.md").read_text())
    unmarked = [b.line for b in blocks if b.marker is None]
    assert not unmarked, f"README.md blocks at lines {unmarked} have no <!-- readme-test: ... --> comment before them"
    for block in blocks:
        assert block.marker in MODES or re.fullmatch(r"skip \S.*", block.marker), f"unknown marker at {block.where()}"
        if not block.marker.startswith("skip"):
            assert block.language == "bash", f"{block.where()} runs in bash, so it is a ```bash block"
    assert [b for b in blocks if b.marker == "demo"][0].text.startswith("make demo"), "the first demo block starts it"


def test_the_block_parser_reads_markers_continuations_and_skips_diagrams():
    text = ("<!-- readme-test: local -->\n```bash\nfoo \\\n  --bar\nbaz\n```\n\n```mermaid\nflowchart LR\n```\n"
            "<!-- readme-test: skip needs a GPU -->\n\n```bash\ngpu-thing\n```\n```python\nx = 1\n```\n")
    blocks = readme_blocks(text)
    assert [(b.line, b.marker, b.language) for b in blocks] == [
        (2, "local", "bash"), (13, "skip needs a GPU", "bash"), (16, None, "python")]
    assert first_command(blocks[0].text) == ("foo \\\n  --bar", "baz")


def write_user_documents(root: Path) -> None:
    """The files the curl examples send: a one-page PDF and a page image, as a user would have."""
    page = Image.new("RGB", (768, 768), "white")
    ImageDraw.Draw(page).text((40, 40), "Rail traffic fell in the region this quarter.", fill="black")
    page.save(root / "report.pdf")
    page.save(root / "scan.png")


def run_block(checkout: FreshCheckout, block: Block, logs: Path) -> None:
    log = logs / f"readme-{block.line}.log"
    code = checkout.shell(PRELUDE + block.text, log, BLOCK_TIMEOUT_S)
    assert code == 0, f"{block.where()} failed (exit {code}):\n{block.text}\n--- its output, last lines:\n" \
                      f"{log.read_text()[-6000:]}\n--- Ray's logs: {checkout.ray_tmp}/ray/session_latest/logs"


def run_serving_block(checkout: FreshCheckout, block: Block, logs: Path) -> None:
    """The block's first command serves in the background; the rest call it; then it gets Ctrl-C."""
    server_command, clients = first_command(block.text)
    server_log = logs / f"readme-{block.line}-server.log"
    server = checkout.popen(server_command, server_log)
    try:
        deadline = time.monotonic() + 600
        while True:
            assert server.poll() is None, f"{block.where()}: `{server_command}` exited ({server.returncode}):\n" \
                                          f"{server_log.read_text()[-6000:]}"
            try:
                if requests.get("http://localhost:8000/readyz", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, f"{block.where()}: not ready in 600 s:\n{server_log.read_text()[-6000:]}"
            time.sleep(2)
        run_block(checkout, Block(block.line, block.language, block.marker, clients), logs)
    finally:
        checkout.interrupt(server)


def stop_demo_cluster(checkout: FreshCheckout) -> None:
    """What the README's `ray stop` does, for the demo's cluster only: its processes, and Ray's pointer to it."""
    checkout.stop_processes()
    (checkout.ray_tmp / "ray" / "ray_current_cluster").unlink(missing_ok=True)


@pytest.mark.slow  # about 20 minutes on 2 busy cores: the demo, a training run, a sweep, serving, jobs
def test_every_readme_command_runs_as_written_on_a_fresh_checkout(tmp_path):
    deadline = time.monotonic() + PORT_WAIT_S
    while (taken := ports_in_use(DEMO_PORTS)) and time.monotonic() < deadline:
        time.sleep(5)  # often another test's short-lived cluster
    if taken:
        pytest.skip(f"the README's commands use fixed ports, and these stayed taken for {PORT_WAIT_S} s: "
                    f"{', '.join(taken)}")
    blocks = readme_blocks((ROOT / "README.md").read_text())
    checkout = FreshCheckout.create(tmp_path)
    write_user_documents(checkout.root)
    (checkout.home / ".curlrc").write_text("fail-with-body\nshow-error\nmax-time = 600\n")
    logs = tmp_path / "logs"
    logs.mkdir()
    ran = []
    try:
        for block in (b for b in blocks if b.marker == "demo"):
            run_block(checkout, block, logs)
            ran.append(block.line)
        stop_demo_cluster(checkout)
        for block in (b for b in blocks if b.marker in ("local", "local serve")):
            (run_serving_block if block.marker == "local serve" else run_block)(checkout, block, logs)
            ran.append(block.line)
    finally:
        checkout.stop_processes()
    skipped = [b.marker.removeprefix("skip ") for b in blocks if b.marker.startswith("skip")]
    print(f"ran the blocks at README.md lines {ran}; skipped {len(skipped)}: {skipped}")
    assert (checkout.root / "exports" / "smoke" / "adapter_config.json").exists()
    assert (checkout.root / ".deepsynth" / "runs" / "cpu-rank-sweep" / "results.csv").exists()
    checkout.remove_ray_tmp()  # kept when a command failed: Ray's logs are in it
