"""The vLLM engine's deployment files: the optional extra, the GPU image, serve/config.gpu.yaml on gpu_serve nodes."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import tomllib

from deploy_files import ROOT, load_yaml, read_dockerfile
from packaging.requirements import Requirement
from ray.serve.schema import ServeDeploySchema

from deepsynth.serving.config import ServeConfig

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_vllm_is_an_optional_extra_pinned_like_ray_llm():
    extras = PYPROJECT["project"]["optional-dependencies"]
    (vllm,) = [Requirement(r) for r in extras["vllm"]]
    ray_llm = [Requirement(r) for r in importlib.metadata.requires("ray")
               if Requirement(r).name == "vllm" and 'extra == "llm"' in r]
    assert ray_llm and str(vllm.specifier) == str(ray_llm[0].specifier) == "==0.29.0"
    # CPU installs never pull it: not a dependency, nor in another extra.
    everything = PYPROJECT["project"]["dependencies"] + [r for name, rs in extras.items() if name != "vllm" for r in rs]
    assert not any(Requirement(r).name == "vllm" for r in everything)


def test_the_cuda_image_installs_the_vllm_extra_and_the_cpu_image_does_not():
    install = next(args for kind, args in read_dockerfile() if kind == "RUN" and "-e ." in args)
    assignment = re.match(r"(EXTRAS=\$\(.*?\)\)?)\s*&&", install).group(1)
    for variant, extras in (("cu128", "[vllm]"), ("cpu", "")):
        # The Dockerfile's own shell snippet, run as the build runs it.
        result = subprocess.run(["sh", "-c", f'VARIANT={variant}; {assignment}; printf %s "$EXTRAS"'],
                                capture_output=True, text=True, check=True)
        assert result.stdout == extras, (variant, result.stdout)
    assert "-e .${EXTRAS}" in install


def test_gpu_config_deploys_the_vllm_engine_autoscaling_on_gpu_serve_nodes():
    config = ServeDeploySchema.model_validate(load_yaml("serve/config.gpu.yaml"))
    summarizer = next(app for app in config.applications if app.name == "summarizer")
    args = ServeConfig.model_validate(summarizer.args)  # the fields alone; the paths exist on the cluster only
    assert args.engine == "vllm" and args.vllm_model and args.max_num_beams == 1
    serve_node = load_yaml("cluster.yaml")["available_node_types"]["gpu_serve"]
    assert 0 < args.num_gpus <= serve_node["resources"]["GPU"]
    assert args.min_replicas < args.max_replicas <= serve_node["max_workers"]
    assert {app.name for app in config.applications} == {"summarizer", "jobs"}
