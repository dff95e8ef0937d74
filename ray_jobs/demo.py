"""The demo behind `make demo`: the whole platform on one machine, offline, in a few minutes.

    python -m ray_jobs.demo            # leaves Ray, the summarizer and the job API running; `ray stop` ends them
    python -m ray_jobs.demo --stop     # tears its cluster down at the end (what the tests do)

It starts a local Ray cluster (`ray start --head`, token auth on, dashboard on 127.0.0.1), then
runs each step the way a user would, as a Ray driver against that cluster:

 1. build the tiny offline DeepSeek-OCR-2 (once) and take the built-in corpus;
 2. `ray_jobs.prepare_dataset`: render documents to Parquet page shards with Ray Data;
 3. `ray_jobs.evaluate`: ROUGE of the untrained model on held-out documents (near zero);
 4. `ray_jobs.train`: fine-tune the decoder on Ray Train from the prepared pages
    (`ray_jobs/configs/demo_cpu.yaml`: in full, since LoRA on the tiny model learns nothing of the
    task in the demo's few minutes);
 5. `ray_jobs.evaluate`: ROUGE of the checkpoint on the same documents;
 6. `deepsynth export`: a model folder with a model card;
 7. `serve deploy`: the summarizer (serving the checkpoint) at /, the job API at /api and the console at /ui;
 8. one summarization request and one job listing over HTTP.

The model learns to read the bulletins' pages: held-out ROUGE-L goes from about 0 to above 0.8,
and the summary of the sample document is its headline.

Everything lands under `--out-dir` (default .deepsynth/); the last lines say where, and how to stop.
This process never imports Ray: it talks to the cluster through the CLI and HTTP only, like a user.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import requests
import yaml

from deepsynth.dashboard import DashboardNotReady, wait_for_dashboard
from deepsynth.data.corpus import generate_corpus

BIN = Path(sys.executable).parent
PROJECT_DIR = Path(__file__).resolve().parents[1]


@dataclass
class DemoConfig:
    out_dir: str = ".deepsynth"
    """Where the model, dataset, run, export and cluster state go."""
    num_documents: int = 256
    """Built-in documents to prepare per split (train and validation)."""
    max_steps: int = 1200
    """Training steps (batch 8, the decoder in full)."""
    eval_documents: int = 32
    """Held-out built-in test documents scored before and after training."""
    ray_port: int = 6379
    """GCS port of the demo's Ray head."""
    dashboard_port: int = 8265
    """Ray dashboard (and Jobs / `serve deploy` REST API) port, bound to 127.0.0.1."""
    serve_port: int = 8000
    """HTTP port of both Serve applications."""
    agent_port: int = 52365
    """Port of Ray's dashboard agent (Ray's default), which Ray Jobs submits through; change it when
    another Ray instance on this machine holds it."""
    stop: bool = False
    """Tear the demo's cluster down at the end instead of leaving it serving."""

    def __post_init__(self) -> None:
        if not 8 <= self.num_documents <= 1000:
            raise ValueError(f"--num-documents must be in [8, 1000], got {self.num_documents}.")
        if not 1 <= self.eval_documents <= 256:
            raise ValueError(f"--eval-documents must be in [1, 256], got {self.eval_documents}.")
        if not 1 <= self.max_steps <= 5000:
            raise ValueError(f"--max-steps must be in [1, 5000], got {self.max_steps}.")


def parse_args(argv: list[str] | None) -> DemoConfig:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    defaults = DemoConfig()
    parser.add_argument("--out-dir", default=defaults.out_dir)
    parser.add_argument("--num-documents", type=int, default=defaults.num_documents)
    parser.add_argument("--max-steps", type=int, default=defaults.max_steps)
    parser.add_argument("--eval-documents", type=int, default=defaults.eval_documents)
    parser.add_argument("--ray-port", type=int, default=defaults.ray_port)
    parser.add_argument("--dashboard-port", type=int, default=defaults.dashboard_port)
    parser.add_argument("--serve-port", type=int, default=defaults.serve_port)
    parser.add_argument("--agent-port", type=int, default=defaults.agent_port)
    parser.add_argument("--stop", action="store_true", help="stop the demo's Ray cluster at the end")
    args = parser.parse_args(argv)
    try:
        return DemoConfig(**vars(args))
    except ValueError as err:
        parser.error(str(err))


def step(number: int, title: str) -> None:
    print(f"\n=== [{number}/8] {title}", flush=True)


def run(command: list[str], env: dict[str, str]) -> str:
    """Run a step as its own process, echoing its output; return the JSON summary line it printed last."""
    print("$ " + shlex.join(command), flush=True)
    lines = []
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as process:
        for line in process.stdout:
            lines.append(line)
            print(line, end="", flush=True)
    if process.returncode != 0:
        sys.exit(f"demo: error: step failed (exit {process.returncode}): {shlex.join(command)}")
    return next((line for line in reversed(lines) if line.startswith("{")), "{}")


def ray_token(env: dict[str, str]) -> str:
    """Ray's auth token: RAY_AUTH_TOKEN if set, else Ray's default file (~/.ray/auth_token), made if missing."""
    if env.get("RAY_AUTH_TOKEN"):
        return env["RAY_AUTH_TOKEN"]
    return subprocess.run([str(BIN / "ray"), "get-auth-token", "--generate"], env=env, check=True,
                          capture_output=True, text=True).stdout.strip().splitlines()[-1]


def port_taken(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME-WAIT is no owner
        try:
            probe.bind(("0.0.0.0", port))
        except OSError:
            return True
    return False


def start_cluster(config: DemoConfig, out: Path, env: dict[str, str]) -> subprocess.Popen:
    """`ray start --head --block`, detached: the cluster outlives this process until `ray stop`."""
    # Checked on every address: Ray's dashboard agent binds the machine's IP, not loopback, and when
    # its port is taken Ray Jobs fail only at the first submission.
    ports = {"--ray-port": config.ray_port, "--dashboard-port": config.dashboard_port,
             "--serve-port": config.serve_port, "--agent-port": config.agent_port}
    taken = [f"{port} ({flag})" for flag, port in ports.items() if port_taken(port)]
    if taken:
        sys.exit(f"demo: error: another process holds port {', '.join(taken)} (a demo or another Ray instance "
                 "left running?). Stop it (`ray stop` stops every Ray instance of this machine), or pass that flag.")
    log = (out / "demo" / "ray-head.log").open("w")
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--port", str(config.ray_port),
         "--dashboard-host", "127.0.0.1", "--dashboard-port", str(config.dashboard_port),
         "--dashboard-agent-listen-port", str(config.agent_port),
         "--num-cpus", str(max(os.cpu_count() or 1, 6)), "--disable-usage-stats"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        wait_for_dashboard(f"http://127.0.0.1:{config.dashboard_port}", token=env["RAY_AUTH_TOKEN"],
                           check_alive=lambda: check_head(head, Path(log.name)))
    except DashboardNotReady as err:
        sys.exit(f"demo: error: {err}")
    return head


def stop_cluster(head: subprocess.Popen, port: int) -> None:
    """Kill the head and every process it started (raylet, GCS, workers, Serve): only this demo's cluster."""
    processes = [psutil.Process(head.pid), *psutil.Process(head.pid).children(recursive=True)]
    for process in processes:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(processes, timeout=30)
    # `ray stop` would also remove Ray's pointer to the latest local cluster; without this, a later
    # plain `ray.init()` would try to join the dead one.
    pointer = Path(os.environ.get("RAY_TMPDIR", "/tmp")) / "ray" / "ray_current_cluster"
    if pointer.exists() and pointer.read_text().strip().endswith(f":{port}"):
        pointer.unlink()


def check_head(head: subprocess.Popen, log: Path) -> None:
    if head.poll() is not None:
        sys.exit(f"demo: error: the Ray head exited (code {head.returncode}); see {log}")


def wait_for(url: str, head: subprocess.Popen, log: Path, timeout_s: float = 180,
             headers: dict | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        check_head(head, log)
        try:
            if requests.get(url, timeout=2, headers=headers).status_code in (200, 401):
                return
        except requests.RequestException:  # not up yet, or busy starting
            pass
        time.sleep(1)
    sys.exit(f"demo: error: {url} did not come up within {timeout_s:.0f} s; see {log} and `serve status`.")


def serve_config(config: DemoConfig, checkpoint: str, out: Path, api_token_file: Path) -> Path:
    """serve/config.yaml with the demo's port, the freshly trained checkpoint and the demo's API token file."""
    spec = yaml.safe_load((PROJECT_DIR / "serve" / "config.yaml").read_text())
    spec["http_options"] = {"host": "127.0.0.1", "port": config.serve_port}
    apps = {app["name"]: app for app in spec["applications"]}
    # The local demo's summarizer is open (it listens on loopback only); a cluster's asks for the token.
    summarizer = {k: v for k, v in apps["summarizer"]["args"].items() if k not in ("model", "api_token_env")}
    apps["summarizer"]["args"] = {**summarizer, "checkpoint": checkpoint}
    apps["jobs"]["args"] = {**apps["jobs"]["args"], "api_token_file": str(api_token_file), "model_roots": [str(out)]}
    path = out / "demo" / "serve.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def main(argv: list[str] | None = None) -> dict:
    config = parse_args(argv)
    out = Path(config.out_dir).resolve()
    (out / "demo").mkdir(parents=True, exist_ok=True)
    api_token_file = out / "demo" / "api-token"
    if not api_token_file.exists():
        api_token_file.write_text(secrets.token_urlsafe(32))
        api_token_file.chmod(0o600)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "DEEPSYNTH_STATE_DIR": str(out / "state"),
           "DEEPSYNTH_STORAGE": str(out),
           # Pausing a training job is a SIGTERM and a checkpoint; give it time before Ray's SIGKILL.
           "RAY_JOB_STOP_WAIT_TIME_S": "120",
           # Serve's proxy drops client-sent timeout headers and oversized headers (serve/proxy.py).
           "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "serve.proxy:middlewares"}
    env.pop("RAY_ADDRESS", None)
    env["RAY_AUTH_TOKEN"] = ray_token(env)
    started = time.monotonic()

    step(1, "Tiny DeepSeek-OCR-2 and the built-in corpus; a local Ray cluster")
    model_dir = out / "tiny-model"
    if not (model_dir / "config.json").exists():
        run([str(BIN / "deepsynth"), "model", "init-tiny", str(model_dir)], env)
    sample = generate_corpus("test", 1, seed=7)[0]
    head = start_cluster(config, out, env)
    env["RAY_ADDRESS"] = f"127.0.0.1:{config.ray_port}"
    dashboard = f"http://127.0.0.1:{config.dashboard_port}"
    print(f"Ray is up: dashboard {dashboard} (token in RAY_AUTH_TOKEN or ~/.ray/auth_token)")
    try:
        summary = run_steps(config, out, env, model_dir, sample, head, api_token_file)
    except BaseException:
        if config.stop:
            stop_cluster(head, config.ray_port)
        raise
    summary["seconds"] = round(time.monotonic() - started, 1)
    summary["dashboard"] = dashboard

    print(f"\nDone in {summary['seconds']:.0f} s. Everything is under {out}:")
    for key in ("model", "dataset", "checkpoint", "eval_report", "export"):
        print(f"  {key:<12} {summary[key]}")
    print(f"  {'dashboard':<12} {dashboard}")
    print(f"  {'summarizer':<12} {summary['summarizer']}/docs  (POST /v1/summarize)")
    print(f"  {'job API':<12} {summary['summarizer']}/api/docs  (Bearer token in {api_token_file})")
    print(f"  {'console':<12} {summary['summarizer']}/ui/  (paste the same token)")
    if config.stop:
        stop_cluster(head, config.ray_port)
        print("The demo's Ray cluster is stopped.")
    else:
        print("Ray, the summarizer and the job API keep running. Stop them with: ray stop")
    print(json.dumps(summary))
    return summary


def run_steps(config: DemoConfig, out: Path, env: dict, model_dir: Path, sample: dict, head: subprocess.Popen,
              api_token_file: Path) -> dict:
    python = str(BIN / "python")
    step(2, "Prepare: render built-in documents to Parquet page shards with Ray Data")
    dataset = out / "datasets" / f"demo-{config.num_documents}"
    if (dataset / "manifest.json").exists():
        print(f"Reusing the prepared dataset at {dataset}")
    else:
        run([python, "-m", "ray_jobs.prepare_dataset", "--name", dataset.name, "--output", str(out),
             "--limit", str(config.num_documents), "--model", str(model_dir)], env)

    evaluate = [python, "-m", "ray_jobs.evaluate", "--limit", str(config.eval_documents), "--max-new-tokens", "8"]
    step(3, "Evaluate the untrained model: ROUGE on held-out built-in documents")
    untrained = json.loads(run([*evaluate, "--model", str(model_dir),
                                "--out", str(out / "demo" / "eval-untrained.json")], env))

    step(4, "Train: the decoder in full on Ray Train, from the prepared pages (ray_jobs/configs/demo_cpu.yaml)")
    run_name = time.strftime("demo-%Y%m%d-%H%M%S")  # a fresh run each time; re-running the same name would resume it
    recipe = PROJECT_DIR / "ray_jobs" / "configs" / "demo_cpu.yaml"
    trained = json.loads(run([python, "-m", "ray_jobs.train", "--config", str(recipe), f"model={model_dir}",
                              "build_tiny_model=false", f"storage_path={out / 'runs'}", f"run_name={run_name}",
                              f"dataset=prepared:{dataset}", f"max_steps={config.max_steps}",
                              f"eval_every={config.max_steps}"], env))
    checkpoint = trained["best_checkpoint"] or trained["latest_checkpoint"]

    step(5, "Evaluate the trained model on the same documents")
    report = json.loads(run([*evaluate, "--checkpoint", checkpoint], env))
    print(f"ROUGE-L on {report['documents']} held-out documents: {untrained['rouge']['rougeL']:.3f} untrained, "
          f"{report['rouge']['rougeL']:.3f} after {config.max_steps} steps", flush=True)

    step(6, "Export: a model folder with a model card")
    export_dir = out / "export" / run_name
    run([str(BIN / "deepsynth"), "export", checkpoint, "--out", str(export_dir)], env)

    step(7, "Serve: the summarizer at /, the job API at /api and the console at /ui, from serve/config.yaml")
    deploy = serve_config(config, checkpoint, out, api_token_file)
    run([str(BIN / "serve"), "deploy", str(deploy), "--address", f"http://127.0.0.1:{config.dashboard_port}"], env)
    base = f"http://127.0.0.1:{config.serve_port}"
    log = out / "demo" / "ray-head.log"
    wait_for(f"{base}/readyz", head, log, timeout_s=300)
    wait_for(f"{base}/api/healthz", head, log, timeout_s=300)
    wait_for(f"{base}/ui/", head, log, timeout_s=300)

    step(8, "Call it: one summary; one job created and listed through the job API")
    answer = requests.post(f"{base}/v1/summarize", json={"text": sample["text"], "max_new_tokens": 8}, timeout=120)
    answer.raise_for_status()
    body = answer.json()
    print(f"POST {base}/v1/summarize -> {answer.status_code}")
    print(f"  summary:   {body['summary']!r}")
    print(f"  reference: {sample['summary']!r}" + ("  (the right headline)" if body["summary"] == sample["summary"]
                                                   else "  (not the headline)"))
    print(f"  usage:     {json.dumps(body['usage'])}")
    auth = {"Authorization": f"Bearer {api_token_file.read_text().strip()}"}
    job = {"type": "prepare_dataset", "preset": "builtin", "overrides": {"limit": 8, "model": str(model_dir)}}
    created = requests.post(f"{base}/api/jobs", json=job, headers=auth, timeout=60)
    created.raise_for_status()
    print(f"POST {base}/api/jobs -> {created.status_code}: {created.json()['id']}")
    jobs = requests.get(f"{base}/api/jobs", headers=auth, timeout=30)
    jobs.raise_for_status()
    listing = jobs.json()
    print(f"GET {base}/api/jobs -> {jobs.status_code}: {len(listing)} job(s)")
    for job in listing:
        print(f"  {job['id']}  {job['type']:<8} {job['status']}")
    return {"model": str(model_dir), "dataset": str(dataset), "checkpoint": checkpoint, "eval_report": report["path"],
            "rouge_untrained": untrained["rouge"], "rouge": report["rouge"], "export": str(export_dir),
            "summarizer": base, "summary": body["summary"], "reference": sample["summary"], "usage": body["usage"],
            "jobs": listing}


if __name__ == "__main__":
    main()
