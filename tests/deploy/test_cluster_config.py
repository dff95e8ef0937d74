"""cluster.yaml and its GCP twin: Ray's own schema, then what the schema cannot see (auth, GPUs, image, storage)."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
from deploy_files import CLUSTER_FILES, ROOT, docker_env, docker_volumes, load_yaml, read_dockerfile, resolve_base_image
from ray.autoscaler._private.util import prepare_config, validate_config

SCHEMA = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
EXPECTED_GPUS = {"gpu_train": 8, "gpu_serve": 1}
# Values every user must replace; each must sit on a line that says CHANGE.
PLACEHOLDERS = ("123456789012", "0123456789abcdef0", "your-gcp-project", "10.0.0.2")
USER_KEYS = ("cluster_name", "max_workers", "idle_timeout_minutes", "region", "availability_zone", "project_id",
             "image", "InstanceType", "machineType", "ImageId", "Arn")


@pytest.fixture(params=CLUSTER_FILES)
def cluster(request):
    return request.param, load_yaml(request.param)


def test_valid_against_the_schema_shipped_in_ray(cluster):
    _, config = cluster
    jsonschema.validate(config, SCHEMA)
    # What `ray up` does: fill in the provider's defaults, then validate the result again.
    validate_config(prepare_config(copy.deepcopy(config)))


def test_the_schema_check_rejects_a_misspelled_key():
    config = load_yaml("cluster.yaml")
    config["available_node_types"]["gpu_train"]["min_worker"] = 0
    with pytest.raises(jsonschema.ValidationError, match="min_worker"):
        jsonschema.validate(config, SCHEMA)


def test_head_starts_with_token_auth_and_a_loopback_dashboard(cluster):
    name, config = cluster
    head_start = next(c for c in config["head_start_ray_commands"] if "ray start" in c)
    assert "RAY_AUTH_MODE=token ray start --head" in head_start, name
    assert "--dashboard-host=127.0.0.1" in head_start and "0.0.0.0" not in head_start, name
    worker_start = next(c for c in config["worker_start_ray_commands"] if "ray start" in c)
    assert "RAY_AUTH_MODE=token ray start" in worker_start, name
    env = docker_env(config["docker"]["run_options"])
    assert env["RAY_AUTH_MODE"] == "token", "clients inside the containers need token auth too"
    # The token is a file copied from the user's machine to Ray's default path, never a value in the YAML.
    assert config["file_mounts"] == {"~/.ray/auth_token": "~/.ray/auth_token"}, name
    assert int(env["RAY_JOB_STOP_WAIT_TIME_S"]) >= 120, "a paused training job needs time to checkpoint"


def test_no_secret_values_in_the_file(cluster):
    name, _ = cluster
    text = (ROOT / name).read_text()
    for key in ("RAY_AUTH_TOKEN", "HF_TOKEN=", "DEEPSYNTH_API_TOKEN=", "AWS_SECRET", "AWS_ACCESS_KEY"):
        assert key not in text, f"{name} must not set {key}"
    assert not re.search(r"hf_[A-Za-z0-9]{20,}", text), name
    # Secrets arrive as an env file written on the node from the cloud's secret manager.
    assert any(re.search(r"secretsmanager get-secret-value|gcloud secrets versions access", c)
               for c in load_yaml(name)["initialization_commands"]), name


def test_gpu_worker_types_autoscale_from_zero(cluster):
    name, config = cluster
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0, "the head is a CPU node"
    assert {t: types[t]["resources"]["GPU"] for t in EXPECTED_GPUS} == EXPECTED_GPUS, name
    for node_type in EXPECTED_GPUS:
        assert types[node_type]["min_workers"] == 0, f"{name}: {node_type} must scale to zero"
        assert 0 < types[node_type]["max_workers"] <= config["max_workers"]
    assert sum(types[t]["max_workers"] for t in EXPECTED_GPUS) <= config["max_workers"]
    assert 0 < config["idle_timeout_minutes"] <= 30


def test_image_is_the_deepsynth_image_tagged_with_the_dockerfiles_base(cluster):
    name, config = cluster
    image = config["docker"]["image"]
    base = resolve_base_image(read_dockerfile())
    assert image.rsplit(":", 1)[1] == base.rsplit(":", 1)[1], f"{name}: {image} vs base {base}"
    assert image.rsplit(":", 1)[0].endswith("/deepsynth"), name
    assert f":{ray.__version__}-" in image


def test_state_and_runs_live_on_the_mounted_persistent_volume(cluster):
    name, config = cluster
    env = docker_env(config["docker"]["run_options"])
    volumes = docker_volumes(config["docker"]["run_options"])
    for key in ("DEEPSYNTH_STATE_DIR", "DEEPSYNTH_STORAGE"):
        path = env[key]
        on_volume = any(f"{path.rstrip('/')}/".startswith(container.rstrip("/") + "/") for _, container in volumes)
        assert on_volume or path.startswith(("s3://", "gs://")), f"{name}: {key}={path} is not persistent"
    mount_point = volumes[0][0].rsplit("/", 1)[0]
    assert any("mount -t nfs" in c and mount_point in c for c in config["initialization_commands"]), (
        f"{name}: {mount_point} must be a network file system mounted on every node")


def test_user_specific_keys_are_marked_change(cluster):
    name, _ = cluster
    lines = (ROOT / name).read_text().splitlines()
    for i, line in enumerate(lines):
        key = line.strip().split(":", 1)[0]
        if key in USER_KEYS:
            assert "CHANGE" in line, f"{name}:{i + 1}: {line.strip()!r} needs a '# CHANGE' comment"
        if any(p in line for p in PLACEHOLDERS) and "CHANGE" not in line:
            # A folded command: its CHANGE note is the comment line right after it.
            following = next(ln for ln in lines[i + 1:] if ln.strip().startswith("#") or ln.strip().startswith("- "))
            assert following.strip().startswith("# CHANGE"), f"{name}:{i + 1}: placeholder without a CHANGE note"


def test_gcp_variant_matches_the_aws_node_layout():
    aws, gcp = load_yaml("cluster.yaml"), load_yaml("deploy/cluster-gcp.yaml")
    summary = lambda c: {name: (t["resources"], t.get("min_workers"), t.get("max_workers"))
                         for name, t in c["available_node_types"].items()}
    assert summary(aws) == summary(gcp)
    assert aws["docker"]["image"].rsplit(":", 1)[1] == gcp["docker"]["image"].rsplit(":", 1)[1]
    assert docker_env(aws["docker"]["run_options"]).keys() == docker_env(gcp["docker"]["run_options"]).keys()
