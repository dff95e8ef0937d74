"""deploy/Dockerfile, checked statically (no Docker engine here): base tag, user, command, pins, healthcheck."""

from __future__ import annotations

import importlib
import json
import re
import tomllib

import ray
from deploy_files import ROOT, load_yaml, read_dockerfile, resolve_base_image
from packaging.requirements import Requirement
from ray.serve.schema import ServeDeploySchema

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PINS = {Requirement(r).name.lower(): Requirement(r) for r in PYPROJECT["project"]["dependencies"]}


def instructions(name: str) -> list[str]:
    return [args for kind, args in read_dockerfile() if kind == name]


def test_base_image_is_a_pinned_ray_tag_of_our_ray_and_python():
    for build_args in ({}, {"VARIANT": "cpu"}):
        base = resolve_base_image(read_dockerfile(), build_args)
        repo, tag = base.rsplit(":", 1)
        assert repo == "rayproject/ray"
        assert "latest" not in tag and "nightly" not in tag
        assert tag.startswith(f"{ray.__version__}-py311-"), base
        assert str(PINS["ray"].specifier) == f"=={ray.__version__}"
    assert resolve_base_image(read_dockerfile(), {"VARIANT": "cpu"}).endswith("-cpu")


def test_torch_comes_from_the_index_of_the_base_images_cuda():
    install = next(args for args in instructions("RUN") if "torch==" in args)
    assert "https://download.pytorch.org/whl/${VARIANT}" in install, "torch's CUDA build must follow the base image"
    arg_defaults = dict(a.split("=", 1) for a in instructions("ARG") if "=" in a)
    assert re.fullmatch(r"cu\d{3}", arg_defaults["VARIANT"]), "the default image is a pinned CUDA build"


def test_python_pins_match_pyproject_and_the_makefile():
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    arg_defaults = dict(a.split("=", 1) for a in instructions("ARG") if "=" in a)
    torch_version = arg_defaults["TORCH_VERSION"]
    makefile_torch = re.search(r"^TORCH := torch==(\S+)", (ROOT / "Makefile").read_text(), re.MULTILINE).group(1)
    assert torch_version == makefile_torch
    assert PINS["torch"].specifier.contains(torch_version)
    # Any other `name==version` in the Dockerfile must be pyproject's pin; the project install
    # (`pip install -e .`) takes the rest, bitsandbytes and deepspeed included, from pyproject.toml.
    for name, version in re.findall(r"([A-Za-z0-9_.\-\[\]]+)==([0-9][^\s\"']*)", text):
        if name == "torch":
            continue
        pin = PINS[re.sub(r"\[.*\]", "", name).lower()]
        assert pin.specifier.contains(version) and str(pin.specifier) == f"=={version}", (name, version)
    assert any("pip install" in r and "--no-build-isolation -e ." in r for r in instructions("RUN"))
    assert any("pip check" in r for r in instructions("RUN"))
    assert "bitsandbytes" in PINS and "==" in str(PINS["bitsandbytes"].specifier)


def test_runs_as_a_non_root_user_without_secrets():
    users = instructions("USER")
    assert users and users[-1] not in ("root", "0", "0:0"), users
    assert not users[-1].startswith(("root:", "0:"))
    for kind in ("ENV", "ARG", "LABEL"):
        for args in instructions(kind):
            for key in re.findall(r"([A-Z_]+)=", args):
                assert not re.search(r"TOKEN|SECRET|PASSWORD|API_KEY|ACCESS_KEY", key), f"{kind} {key} bakes a secret in"
    ignored = (ROOT / ".dockerignore").read_text().split()
    for path in (".git", ".venv", ".deepsynth", "**/*.env", "**/auth_token"):
        assert path in ignored


def test_state_lives_on_a_volume():
    env = " ".join(instructions("ENV"))
    volumes = [v for args in instructions("VOLUME") for v in json.loads(args)]
    for key in ("DEEPSYNTH_STATE_DIR", "DEEPSYNTH_STORAGE"):
        path = re.search(rf"{key}=(\S+)", env).group(1)
        assert any(f"{path.rstrip('/')}/".startswith(v.rstrip("/") + "/") for v in volumes), f"{key}={path} is not under a VOLUME"
    assert "RAY_AUTH_MODE=token" in env


def test_command_serves_the_config_in_the_foreground_and_its_modules_import():
    cmd = json.loads(instructions("CMD")[-1])
    assert cmd[:2] == ["serve", "run"], "`serve run` blocks; `serve deploy` would return and end the container"
    assert not instructions("ENTRYPOINT")
    config_path = cmd[2]
    config = ServeDeploySchema.model_validate(load_yaml(config_path))
    # The file travels into the image: its folder is copied and not excluded by .dockerignore.
    folder = config_path.split("/")[0]
    assert any(args.split()[-2].rstrip("/") == folder for args in instructions("COPY") if "--from" not in args)
    assert folder not in (ROOT / ".dockerignore").read_text().split()
    for app in config.applications:
        module_name, _, attribute = app.import_path.partition(":")
        builder = getattr(importlib.import_module(module_name), attribute)
        assert callable(builder), app.import_path


def test_healthcheck_probes_the_served_port():
    checks = instructions("HEALTHCHECK")
    assert len(checks) == 1 and "/healthz" in checks[0]
    port = load_yaml("serve/config.yaml")["http_options"]["port"]
    assert f"127.0.0.1:{port}/healthz" in checks[0]
    assert str(port) in instructions("EXPOSE")[0].split()
