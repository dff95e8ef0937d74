"""Run documented commands as a new user would: in a fresh copy of the checkout, in a shell, with `.venv` active.

The copy holds the files a clone would (tracked ones, plus untracked ones git does not ignore, so
uncommitted work is what runs) and a `.venv` that is this interpreter's environment, the one
`make setup` made. Commands get a HOME and a Ray temp dir of their own: Ray's token file
(~/.ray/auth_token), curl's config and Ray's pointer to the latest local cluster
(<temp dir>/ray/ray_current_cluster) are then the test's, never another cluster's on this machine.

    checkout = FreshCheckout.create(tmp_path)
    result = checkout.shell("python -m ray_jobs.train --config ray_jobs/configs/cpu_smoke.yaml", timeout=600)
    checkout.stop_processes()   # whatever Ray left behind, found by the checkout's own temp dir
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import psutil

from ray_jobs.demo import port_taken

ROOT = Path(__file__).resolve().parents[1]


def ports_in_use(ports: dict[int, str]) -> list[str]:
    """The ports of `ports` (port -> what uses it) that a process on this machine listens on, on any address."""
    return [f"{port} ({what})" for port, what in ports.items() if port_taken(port)]


@dataclass
class FreshCheckout:
    root: Path
    home: Path
    ray_tmp: Path

    @classmethod
    def create(cls, parent: Path) -> FreshCheckout:
        root, home = parent / "checkout", parent / "home"
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                                check=True, capture_output=True, text=True).stdout.split("\0")
        for name in filter(None, listed):
            source = ROOT / name
            if source.is_file():  # a file deleted in the work tree stays listed until committed
                (root / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, root / name)  # mtimes kept: make sees .venv as newer than pyproject.toml
        (root / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
        home.mkdir()
        # Short: Ray's socket paths live under it.
        return cls(root=root, home=home, ray_tmp=Path(tempfile.mkdtemp(prefix="rdm", dir="/tmp")))

    def env(self) -> dict[str, str]:
        """A user's environment: none of this test session's Ray or token settings."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("RAY_", "DEEPSYNTH_")) and k not in ("VIRTUAL_ENV", "HF_TOKEN", "PYTHONPATH")}
        env.update(HOME=str(self.home), RAY_TMPDIR=str(self.ray_tmp))
        return env

    def popen(self, command: str, log: Path) -> subprocess.Popen:
        """Start `command` in bash, after `source .venv/bin/activate` as the README says, in its own session."""
        return subprocess.Popen(["bash", "-c", f"set -e\nsource .venv/bin/activate\n{command}"], cwd=self.root,
                                env=self.env(), stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)

    def shell(self, command: str, log: Path, timeout: float) -> int:
        """Run `command` to the end (killed after `timeout` s); its exit code. Output goes to `log`."""
        process = self.popen(command, log)
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.interrupt(process, signal.SIGKILL)
            return -signal.SIGKILL

    def interrupt(self, process: subprocess.Popen, sig: int = signal.SIGINT, wait: float = 60) -> None:
        """Send `sig` to the command's process group (Ctrl-C by default), then kill what is left of it."""
        try:
            os.killpg(process.pid, sig)
            process.wait(timeout=wait)
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)

    def stop_processes(self) -> None:
        """Kill every process of the Ray clusters the commands started: those whose command line names our temp dir."""
        kill_processes_mentioning(str(self.ray_tmp))

    def remove_ray_tmp(self) -> None:
        """Delete the clusters' temp dir (sessions and logs), once nothing runs from it."""
        shutil.rmtree(self.ray_tmp, ignore_errors=True)


def kill_processes_mentioning(marker: str) -> None:
    """Kill the processes whose command line contains `marker` (a cluster's own temp dir), twice for late starters."""
    for _ in range(2):
        found = [p for p in psutil.process_iter(["cmdline"])
                 if marker in " ".join(p.info["cmdline"] or []) and p.pid != os.getpid()]
        for process in found:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(found, timeout=10)
