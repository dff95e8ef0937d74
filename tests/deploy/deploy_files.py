"""Deployment files (cluster YAMLs, Dockerfile) and cluster teardown, shared by the tests in tests/deploy/."""

from __future__ import annotations

import itertools
import os
import re
import shlex
import signal
import subprocess
from pathlib import Path

import yaml
from fresh_checkout import kill_processes_mentioning

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_FILES = ("cluster.yaml", "deploy/cluster-gcp.yaml")


def load_yaml(relative: str) -> dict:
    return yaml.safe_load((ROOT / relative).read_text())


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs of a Dockerfile, with continuation lines joined and comments dropped."""
    logical, current = [], ""
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    return [(parts[0].upper(), parts[1] if len(parts) > 1 else "") for parts in (ln.strip().split(None, 1) for ln in logical)]


def resolve_base_image(instructions: list[tuple[str, str]], build_args: dict[str, str] | None = None) -> str:
    """The FROM image with the ARG defaults declared before it (or `build_args`) substituted."""
    args = {}
    for name, value in instructions:
        if name == "ARG":
            key, _, default = value.partition("=")
            args[key.strip()] = default.strip()
        if name == "FROM":
            args.update(build_args or {})
            return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], value.split()[0])
    raise AssertionError("the Dockerfile has no FROM")


def docker_env(run_options: list[str]) -> dict[str, str]:
    """Environment variables set by `--env K=V` / `-e K=V` in docker run options."""
    env = {}
    for option in run_options:
        words = shlex.split(option)
        for flag, value in itertools.pairwise(words):
            if flag in ("--env", "-e") and "=" in value:
                key, _, val = value.partition("=")
                env[key] = val
    return env


def docker_volumes(run_options: list[str]) -> list[tuple[str, str]]:
    """(host path, container path) of every `--volume`/`-v` run option."""
    volumes = []
    for option in run_options:
        words = shlex.split(option)
        for flag, value in itertools.pairwise(words):
            if flag in ("--volume", "-v"):
                host, container = value.split(":")[:2]
                volumes.append((host, container))
    return volumes


def read_dockerfile() -> list[tuple[str, str]]:
    return dockerfile_instructions((ROOT / "deploy" / "Dockerfile").read_text())


def kill_cluster(process: subprocess.Popen, marker: str) -> None:
    """Stop the head's process group, then any process of this cluster that left it (found by its temp dir)."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
            process.wait(timeout=wait)
            break
        except ProcessLookupError:
            break
        except subprocess.TimeoutExpired:
            continue
    kill_processes_mentioning(marker)
