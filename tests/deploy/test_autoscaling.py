"""Autoscaling of cluster.yaml's GPU worker types, simulated with Ray's fake multi-node provider.

The fake cluster's node types are derived from cluster.yaml (same names, GPUs, min/max workers), so
the simulation follows the file. Fake nodes are real raylets on this machine with logical GPUs; a
Ray Train job asking for two whole-node GPU workers must make the autoscaler (v2) start two
`gpu_train` nodes, and once it ends, the idle timeout must bring them back to zero.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from conftest import free_port
from deploy_files import kill_cluster, load_yaml
from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_ID, FakeMultiNodeProvider

pytestmark = pytest.mark.slow

RAY = str(Path(sys.executable).parent / "ray")
IDLE_TIMEOUT_MINUTES = 0.3
# Fake nodes keep cluster.yaml's GPUs and node counts; their CPUs are capped so that the raylets
# of a 96-CPU type do not prestart workers for cores this machine lacks.
FAKE_NODE_CPUS = 2


def fake_cluster_config(cluster: dict, gcs_address: str) -> dict:
    """A fake_multinode cluster config with the worker types of a cluster launcher config."""
    types = {
        name: {"resources": {**spec["resources"], "CPU": min(spec["resources"].get("CPU", 1), FAKE_NODE_CPUS),
                             "object_store_memory": 100 * 1024**2},
               "node_config": {}, "min_workers": spec["min_workers"], "max_workers": spec["max_workers"]}
        for name, spec in cluster["available_node_types"].items() if name != cluster["head_node_type"]
    }
    # The fake provider names its head type ray.head.default; it gets no GPUs, like ours.
    types["ray.head.default"] = {"resources": {"CPU": FAKE_NODE_CPUS}, "node_config": {}, "max_workers": 0}
    return {
        "cluster_name": f"fake-{cluster['cluster_name']}",
        "max_workers": cluster["max_workers"],
        "upscaling_speed": cluster["upscaling_speed"],
        "idle_timeout_minutes": IDLE_TIMEOUT_MINUTES,
        # Ray's fake multi-node provider. `type: fake_multinode` names the same class but also loads a
        # defaults file (fake_multi_node/example.yaml) that the Ray wheel does not ship; `external` skips it.
        "provider": {"type": "external", "module": f"{FakeMultiNodeProvider.__module__}.FakeMultiNodeProvider",
                     "gcs_address": gcs_address, "launch_multiple": True,
                     "head_node_id": FAKE_HEAD_NODE_ID, "use_node_id_as_ip": True,
                     "disable_node_updaters": True, "disable_launch_config_check": True},
        "auth": {}, "docker": {}, "available_node_types": types, "head_node_type": "ray.head.default",
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [], "initialization_commands": [], "setup_commands": [],
        "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


# The "training job": Ray Train workers that each hold a whole training node's GPUs and only sleep.
JOB = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    import ray, ray.train
    from ray.train import RunConfig, ScalingConfig
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    gpus, hold_s, out = int(sys.argv[1]), float(sys.argv[2]), Path(sys.argv[3])

    def hold(config):
        context = ray.get_runtime_context()
        where = {"node_id": context.get_node_id(), "gpu_ids": context.get_accelerator_ids()["GPU"]}
        (out / f"worker-{ray.train.get_context().get_world_rank()}.json").write_text(json.dumps(where))
        time.sleep(config["hold_s"])

    ray.init()
    trainer = DataParallelTrainer(
        hold, train_loop_config={"hold_s": hold_s},
        scaling_config=ScalingConfig(num_workers=2, use_gpu=True, resources_per_worker={"CPU": 1, "GPU": gpus}),
        run_config=RunConfig(name="fake-gpu-scale", storage_path=str(out / "runs")),
    )
    trainer.fit()
""")

def _nodes(gcs_address: str) -> dict[str, str]:
    """Node id -> node type of the live nodes, as the autoscaler sees them."""
    from ray.autoscaler.v2.sdk import get_cluster_status

    status = get_cluster_status(gcs_address)
    return {node.node_id: node.ray_node_type_name for node in status.active_nodes + status.idle_nodes}


def _node_counts(gcs_address: str) -> dict[str, int]:
    types = list(_nodes(gcs_address).values())
    return {name: types.count(name) for name in set(types)}


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"{what} did not happen within {timeout} s")


@pytest.fixture
def fake_cluster(tmp_path):
    cluster = load_yaml("cluster.yaml")
    gcs_address = f"127.0.0.1:{free_port()}"
    config_path = tmp_path / "fake-cluster.yaml"
    config_path.write_text(yaml.safe_dump(fake_cluster_config(cluster, gcs_address)))
    temp_dir = tempfile.mkdtemp(prefix="rfake", dir="/tmp")  # short: Ray's socket paths live under it
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1", RAY_enable_autoscaler_v2="1",
               RAY_CLOUD_INSTANCE_ID=FAKE_HEAD_NODE_ID, RAY_OVERRIDE_NODE_ID_FOR_TESTING=FAKE_HEAD_NODE_ID,
               RAY_NODE_TYPE_NAME="ray.head.default")  # what `ray up` sets for autoscaler v2
    log = (tmp_path / "head.log").open("w")
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", f"--autoscaling-config={config_path}", f"--num-cpus={FAKE_NODE_CPUS}",
         "--num-gpus=0", "--node-ip-address=127.0.0.1", f"--port={gcs_address.rsplit(':', 1)[1]}",
         "--temp-dir", temp_dir, "--include-dashboard=false", f"--ray-client-server-port={free_port()}",
         f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
         f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}"],
        env=env, start_new_session=True, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        _wait_for(lambda: head.poll() is not None or _listening(gcs_address), 90, "the GCS listening")
        assert head.poll() is None, (tmp_path / "head.log").read_text()[-3000:]
        _wait_for(lambda: "ray.head.default" in _node_counts(gcs_address), 60, "the head registering")
        yield {"cluster": cluster, "gcs_address": gcs_address, "env": env, "tmp": tmp_path}
    finally:
        # Fake worker nodes are started by the autoscaler; kill_cluster finds them by the temp dir.
        kill_cluster(head, temp_dir)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _listening(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
    except OSError:
        return False
    return True


def test_a_two_gpu_worker_job_scales_training_nodes_up_and_back_to_zero(fake_cluster):
    cluster, gcs_address = fake_cluster["cluster"], fake_cluster["gcs_address"]
    gpus_per_node = cluster["available_node_types"]["gpu_train"]["resources"]["GPU"]
    assert _node_counts(gcs_address).get("gpu_train", 0) == 0, "min_workers 0: no GPU node before the job"

    job = subprocess.Popen(
        [sys.executable, "-c", JOB, str(gpus_per_node), "20", str(fake_cluster["tmp"])],
        env={**fake_cluster["env"], "RAY_ADDRESS": gcs_address}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        started = time.monotonic()
        _wait_for(lambda: _node_counts(gcs_address).get("gpu_train", 0) == 2 or job.poll() is not None, 120,
                  "two gpu_train nodes starting")
        scale_up_s = time.monotonic() - started
        nodes = _nodes(gcs_address)
        assert list(nodes.values()).count("gpu_train") == 2, (nodes, job.stdout.read()[-3000:] if job.poll() else "")
        assert "gpu_serve" not in nodes.values(), "a job for whole 8-GPU nodes must not start serving nodes"
        out, _ = job.communicate(timeout=180)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 0, out[-3000:]
    # Each worker held all the GPUs of its own training node.
    workers = [json.loads((fake_cluster["tmp"] / f"worker-{rank}.json").read_text()) for rank in (0, 1)]
    assert {nodes[w["node_id"]] for w in workers} == {"gpu_train"}
    assert workers[0]["node_id"] != workers[1]["node_id"]
    assert [len(w["gpu_ids"]) for w in workers] == [gpus_per_node, gpus_per_node]

    ended = time.monotonic()
    budget = IDLE_TIMEOUT_MINUTES * 60 + 45  # the timeout, plus autoscaler ticks and node shutdown
    _wait_for(lambda: _node_counts(gcs_address).get("gpu_train", 0) == 0, budget, "scaling back to zero")
    print(f"0 -> 2 gpu_train nodes in {scale_up_s:.1f} s; back to 0 {time.monotonic() - ended:.1f} s after the job")
