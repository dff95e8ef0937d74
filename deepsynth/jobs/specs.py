"""Job requests → validated, server-built Ray Job entrypoints.

A client asks for `{type, preset, overrides}`; it never sends an entrypoint, a runtime_env or
a path. `build_spec` checks the preset exists, validates every override against the config the
entry script itself uses (`TrainConfig` for train, `SweepConfig` for tune, `EvalConfig` for
evaluate, `PrepareConfig` for prepare_dataset), applies the server's rules (where runs and
datasets go, which models and how many workers are allowed) and builds the command with every
value shell-quoted. What the server decides, a client cannot override:

- where output goes: `storage_path`, `run_name`, `sweep_name`, `base_config`, evaluate's `out`,
  prepare's `output` and `name` (all under `JobSettings.storage`, named after the job, so a job
  only ever writes, and a purge only ever removes, its own folder);
- `build_tiny_model` (it writes a folder), and `trust_remote_code` unless the server allows it;
- `model`: a Hub id, or a folder under one of `JobSettings.model_roots` (a path that exists on the server,
  relative to the project folder or absolute, is a folder, whatever its shape);
- `dataset`: builtin, a dataset preset or `prepared:<name>` of a dataset under the storage;
  never a local file path;
- `num_workers` at most `JobSettings.max_workers`;
- the driver's resources: an evaluate job on `device: cuda` (without Ray Data) asks Ray for one
  GPU for its entrypoint, since drivers otherwise run on the (CPU-only) head node.

Every override must already have its field's type (`deepsynth.jobs.json_types`: no string read as a
number or a list, only finite floats), where the CLI's `key=value` strings are parsed by YAML.

    spec = build_spec(JobRequest(type="train", preset="cpu_smoke", overrides={"max_steps": 20}), "job-1", settings)
    client.submit_job(entrypoint=spec.entrypoint, ...)
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, JsonValue

from deepsynth.data.datasets import PRESETS
from deepsynth.data.prepared import NAME_PATTERN, PREFIX, PrepareConfig, join, read_manifest
from deepsynth.data.uploads import UPLOAD_PREFIX, UPLOAD_SPLITS
from deepsynth.evaluation.benchmarks import BENCHMARKS
from deepsynth.evaluation.config import EvalConfig
from deepsynth.jobs.json_types import check_types
from deepsynth.jobs.secrets import contains_secret
from deepsynth.model.full_size import published_config
from deepsynth.model.loading import DEFAULT_MODEL
from deepsynth.training.config import TrainConfig, config_from_dict
from deepsynth.training.modes import size_choices
from deepsynth.training.sweep import SweepConfig

JOB_TYPES = ("train", "tune", "evaluate", "prepare_dataset")
# The Hub's repo id grammar (huggingface_hub's validate_repo_id), ASCII only: an owner and a name of at most 96
# letters, digits, '_', '-' or '.', neither starting nor ending with '-' or '.', with no '--' or '..'.
_HUB_PART = r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?"
HUB_ID = re.compile(rf"{_HUB_PART}/{_HUB_PART}")


class SpecError(ValueError):
    """A request the server will not run; the message names the field and the fix (a 422).

    `field` is the failing field's path in the request body (`preset`, `overrides.lr`, `overrides.overrides.lr`
    for a sweep's trials), when it is known, so a client can show the error next to it.
    """

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class JobRequest(BaseModel):
    """What a client may send to create a job. Anything else (entrypoint, runtime_env, ...) is refused."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["train", "tune", "evaluate", "prepare_dataset"]
    preset: str = Field(pattern=NAME_PATTERN.pattern, description="a training/sweep YAML name, a benchmark (evaluate) "
                        "or a dataset source (prepare_dataset); see GET /api/training/presets")
    overrides: dict[str, JsonValue] = Field(default_factory=dict, description="config keys to change")


@dataclass(frozen=True)
class JobSettings:
    """The server's side of every job: where things go and what clients may choose."""

    storage: str
    """Root of run folders (`<storage>/runs`), prepared datasets (`<storage>/datasets`) and evaluations."""
    configs_dir: Path
    """The YAML presets (ray_jobs/configs)."""
    project_dir: Path
    """Where entrypoints run (the folder holding ray_jobs/ on the cluster's nodes)."""
    python: str
    """The interpreter that runs entrypoints."""
    model_roots: tuple[str, ...] = ()
    """Local folders clients may name as `model`; empty allows Hub ids only."""
    max_workers: int = 8
    allow_remote_code: bool = False
    """Whether a client may set trust_remote_code (runs code from a model repository)."""

    @property
    def runs_root(self) -> str:
        return join(self.storage, "runs")

    @property
    def datasets_root(self) -> str:
        return join(self.storage, "datasets")


@dataclass(frozen=True)
class JobSpec:
    entrypoint: str
    run_name: str
    run_dir: str
    total_steps: int | None
    """Optimizer steps a train job will run (its progress denominator); None for other types."""
    num_gpus: float = 0
    """GPUs Ray reserves for the entrypoint (`entrypoint_num_gpus`); 0 lets it run anywhere, e.g. the head."""
    config: dict = dataclasses.field(default_factory=dict)
    """The resolved config the entrypoint runs (preset, overrides and the server's settings), as JSON values."""


def list_presets(configs_dir: Path) -> list[dict]:
    """Every YAML preset: its name, job type (train or tune), first comment line and values."""
    presets = []
    for path in sorted(configs_dir.glob("*.yaml")):
        text = path.read_text()
        values = yaml.safe_load(text) or {}
        first = text.splitlines()[0] if text else ""
        presets.append({"name": path.stem, "type": "tune" if "sweep_name" in values else "train",
                        "description": first.lstrip("# ").strip() if first.startswith("#") else "", "config": values})
    return presets


def training_sizes(values: dict, project_dir: Path) -> dict | None:
    """For a train preset's model and LoRA rank: trainable parameters and bytes of weights, gradients and AdamW
    state of each choice (full, lora default, lora all, qlora), computed on the meta device.

    None where the model's config.json is not at hand (a folder not built yet, a Hub id other than the
    published DeepSeek-OCR-2, whose configuration is built in) or the model is not a DeepSeek-OCR-2.
    """
    model = values.get("model", DEFAULT_MODEL)
    rank = values.get("lora_rank", TrainConfig.lora_rank)
    if model == DEFAULT_MODEL:
        return _sizes(published_config().to_json_string(), rank)
    config_file = (project_dir / model / "config.json") if not Path(model).is_absolute() else Path(model) / "config.json"
    if not config_file.is_file():
        return None
    text = config_file.read_text()
    return _sizes(text, rank) if json.loads(text).get("model_type") == "deepseek_ocr2" else None


@functools.lru_cache(maxsize=32)
def _sizes(config_json: str, rank: int) -> dict:
    from transformers import DeepseekOcr2Config

    tables = size_choices(DeepseekOcr2Config.from_dict(json.loads(config_json)), rank)
    return {name: {"trainable_parameters": rows[-1].trainable, "weight_bytes": rows[-1].weight_bytes,
                   "gradient_bytes": rows[-1].gradient_bytes, "optimizer_bytes": rows[-1].optimizer_bytes}
            for name, rows in tables.items()}


def build_spec(request: JobRequest, job_id: str, settings: JobSettings, secrets: frozenset[str] = frozenset()) -> JobSpec:
    """Validate `request` and build its entrypoint, or raise SpecError naming the field and the fix."""
    for key, value in request.overrides.items():
        if contains_secret(value, secrets):
            raise SpecError(f"overrides.{key} carries a secret value; jobs read secrets (HF_TOKEN, ...) from the "
                            "cluster's environment, never from a request.", field=f"overrides.{key}")
    try:
        builder = {"train": _train, "tune": _tune, "evaluate": _evaluate, "prepare_dataset": _prepare}[request.type]
        return builder(request, job_id, settings)
    except SpecError:
        raise
    except ValueError as err:  # the configs' own validation, which names the key and the fix
        raise SpecError(str(err), field=failing_field(str(err), CONFIG_FIELDS[request.type])) from None


# Where each job type's config fields sit in the request body, for `failing_field`.
CONFIG_FIELDS: dict[str, tuple[tuple[str, type], ...]] = {
    "train": (("overrides", TrainConfig),),
    "tune": (("overrides", SweepConfig), ("overrides.overrides", TrainConfig)),
    "evaluate": (("overrides", EvalConfig),),
    "prepare_dataset": (("overrides", PrepareConfig),),
}
# A config's own error starts with the field it is about: `lr must be ...`, `train_limit=4 is ...`, `layout: ...`,
# `Unknown config key 'x' ...`, `Config key 'x' expects ...`, or `overrides.lr expects ...` (check_types).
LEADING_FIELD = re.compile(r"^(Unknown config key |Config key )?'?([A-Za-z_][A-Za-z0-9_.]*)'?")


def failing_field(message: str, places: tuple[tuple[str, type], ...]) -> str | None:
    """The request field a config's ValueError is about, from the name it starts with; None if it names none.

    Only TrainConfig reports unknown keys itself (config_from_dict); it is the last of `places`.
    """
    match = LEADING_FIELD.match(message)
    if not match:
        return None
    unknown, name = match.group(1) == "Unknown config key ", match.group(2)
    if unknown:
        return f"{places[-1][0]}.{name}"
    if any(name.startswith(where + ".") for where, _ in places):
        return name  # check_types names the full path itself
    for where, cls in places:
        if name in {f.name for f in dataclasses.fields(cls)}:
            return f"{where}.{name}"
    return None


def _construct(cls, values: dict, where: str):
    """`cls(**values)` of values whose types `check_types` has checked; its own validation raises ValueError."""
    check_types(cls, values, where)
    return cls(**values)


def _command(settings: JobSettings, module: str, args: list[str], before: str = "") -> str:
    """`cd <project> && [before &&] exec python -m module args...`, every server- or client-given part quoted."""
    parts = [settings.python, "-m", module, *args]
    # `exec` so Ray's stop signal reaches the Python process itself, not only a shell.
    steps = [f"cd {shlex.quote(str(settings.project_dir))}", *([before] if before else []),
             "exec " + " ".join(shlex.quote(p) for p in parts)]
    return " && ".join(steps)


def _preset_file(settings: JobSettings, name: str, kind: str) -> tuple[Path, dict]:
    presets = {p["name"]: p for p in list_presets(settings.configs_dir) if p["type"] == kind}
    if name not in presets:
        raise SpecError(f"preset {name!r} is not a {kind} preset; choose one of {sorted(presets)} "
                        "(GET /api/training/presets).", field="preset")
    return settings.configs_dir / f"{name}.yaml", presets[name]["config"]


def _refuse(overrides: dict, rules: dict[str, str], where: str = "overrides") -> None:
    for key, why in rules.items():
        if key in overrides:
            raise SpecError(f"{where}.{key} cannot be set by a client: {why}", field=f"{where}.{key}")


def _check_model(value: Any, settings: JobSettings, where: str) -> str:
    """A Hub id as given, or a model folder under a model root as an absolute path; else SpecError.

    Entrypoints run in the project folder, so a relative path is read from there: `ray_jobs/configs` is shaped
    like a Hub id, but it is a server folder, and only folders under a model root may be named.
    """
    roots = list(settings.model_roots) or "none configured"
    refused = SpecError(f"{where}={value!r} is neither a Hub id (org/name) nor a folder under the server's model "
                        f"roots ({roots}).", field=where)
    if not isinstance(value, str) or not value or "\0" in value:
        raise refused
    path = settings.project_dir / value
    try:
        exists = path.exists()
    except OSError:  # e.g. a name too long for the filesystem: no such folder
        exists = False
    if not exists:
        if HUB_ID.fullmatch(value) and "--" not in value and ".." not in value:
            return value
        raise refused
    resolved = path.resolve()
    if not any(resolved.is_relative_to(Path(root).resolve()) for root in settings.model_roots):
        raise refused
    if not (resolved / "config.json").is_file():
        raise SpecError(f"{where}: {value} holds no model (no config.json).", field=where)
    return str(resolved)


def _check_dataset(value: Any, settings: JobSettings, where: str) -> str:
    if not isinstance(value, str):
        raise SpecError(f"{where} must be a string: builtin, a dataset preset or prepared:<name>.", field=where)
    if value == "builtin" or value in PRESETS:
        return value
    if value.startswith(PREFIX) and NAME_PATTERN.fullmatch(value.removeprefix(PREFIX)):
        folder = join(settings.datasets_root, value.removeprefix(PREFIX))
        try:
            read_manifest(folder)
        except FileNotFoundError:
            raise SpecError(f"{where}={value!r} is not a prepared dataset on this server; see GET "
                            "/api/datasets/generated, or create it with a prepare_dataset job.", field=where) from None
        return PREFIX + folder
    raise SpecError(f"{where}={value!r}: use builtin, a dataset preset ({', '.join(sorted(PRESETS))}) or "
                    "prepared:<name> of a dataset listed by GET /api/datasets/generated.", field=where)


TRAIN_RULES = {
    "storage_path": "runs go under the server's DEEPSYNTH_STORAGE.",
    "run_name": "the server names the run after the job, so pause/resume find it.",
    "build_tiny_model": "it writes a model folder; name an existing model instead.",
}


def _train_overrides(overrides: dict, settings: JobSettings, where: str) -> dict:
    """Check the server's rules on TrainConfig overrides; return them with paths made server-side."""
    _refuse(overrides, TRAIN_RULES, where)
    check_types(TrainConfig, overrides, where)
    values = dict(overrides)
    if "model" in values:
        values["model"] = _check_model(values["model"], settings, f"{where}.model")
        values["build_tiny_model"] = False
    if "dataset" in values:
        values["dataset"] = _check_dataset(values["dataset"], settings, f"{where}.dataset")
    if values.get("trust_remote_code") and not settings.allow_remote_code:
        raise SpecError(f"{where}.trust_remote_code=true is not allowed on this server (it runs a model "
                        "repository's code); ask the operator to allow it.", field=f"{where}.trust_remote_code")
    workers = values.get("num_workers")
    if workers is not None and workers > settings.max_workers:
        raise SpecError(f"{where}.num_workers={workers} is above this server's limit of {settings.max_workers}.",
                        field=f"{where}.num_workers")
    return values


def _train(request: JobRequest, job_id: str, settings: JobSettings) -> JobSpec:
    path, preset = _preset_file(settings, request.preset, "train")
    values = _train_overrides(request.overrides, settings, "overrides")
    server = {"run_name": job_id, "storage_path": settings.runs_root}
    config = config_from_dict({**preset, **values, **server}, source=f"preset {request.preset} with overrides")
    args = ["--config", str(path), *(f"{k}={json.dumps(v)}" for k, v in {**values, **server}.items())]
    return JobSpec(entrypoint=_command(settings, "ray_jobs.train", args), run_name=job_id,
                   run_dir=join(settings.runs_root, job_id), total_steps=config.max_steps, config=config.to_dict())


def _tune(request: JobRequest, job_id: str, settings: JobSettings) -> JobSpec:
    _, preset = _preset_file(settings, request.preset, "tune")
    _refuse(request.overrides, {"sweep_name": "the server names the sweep after the job.",
                                "base_config": "it is the preset's."})
    known = {f.name for f in dataclasses.fields(SweepConfig)}
    unknown = sorted(set(request.overrides) - known)
    if unknown:
        raise SpecError(f"Unknown sweep keys {unknown}; known keys: {sorted(known - {'sweep_name', 'base_config'})}.",
                        field=f"overrides.{unknown[0]}")
    check_types(SweepConfig, request.overrides, "overrides")
    trial = {**preset.get("overrides", {}),
             **_train_overrides(request.overrides.get("overrides", {}), settings, "overrides.overrides"),
             "storage_path": settings.runs_root}
    base_config = settings.configs_dir / Path(preset["base_config"]).name
    sweep = {**preset, **request.overrides, "sweep_name": job_id, "base_config": str(base_config), "overrides": trial}
    base = yaml.safe_load(base_config.read_text()) or {}
    # The script's own validation, before anything runs: the sweep (its grid size too), then every trial's config.
    trials = SweepConfig(**sweep).trials()
    for values in trials:
        config_from_dict({**base, **trial, **values}, source=f"sweep trial {values['run_name']}")
    # The sweep file is written by the job itself, on whichever node runs it.
    sweep_file = f".deepsynth/job-specs/{job_id}.yaml"
    write = (f"mkdir -p .deepsynth/job-specs && printf %s {shlex.quote(yaml.safe_dump(sweep))} > "
             f"{shlex.quote(sweep_file)}")
    return JobSpec(entrypoint=_command(settings, "ray_jobs.tune_lora", ["--config", sweep_file], before=write),
                   run_name=job_id, run_dir=join(settings.runs_root, job_id), total_steps=None,
                   config={**sweep, "trials": trials})


def _evaluate(request: JobRequest, job_id: str, settings: JobSettings) -> JobSpec:
    if request.preset not in BENCHMARKS:
        raise SpecError(f"preset {request.preset!r} is not a benchmark; choose one of {sorted(BENCHMARKS)} "
                        "(GET /api/datasets/benchmarks).", field="preset")
    known = {f.name for f in dataclasses.fields(EvalConfig)}
    unknown = sorted(set(request.overrides) - known)
    if unknown:
        raise SpecError(f"Unknown evaluate keys {unknown}; known keys: {sorted(known)}.", field=f"overrides.{unknown[0]}")
    if "://" in settings.storage:
        raise SpecError("evaluate jobs need the server's storage (DEEPSYNTH_STORAGE) on a shared filesystem: "
                        "evaluation and serving load checkpoints, and write reports, as local files, and this "
                        "server keeps runs on a cloud URI. Ask the operator to mount the storage (e.g. /data).",
                        field="type")
    config = _construct(EvalConfig, request.overrides, "overrides")
    if config.concurrency > settings.max_workers:
        raise SpecError(f"overrides.concurrency={config.concurrency} is above this server's limit of "
                        f"{settings.max_workers} (max_workers).")
    args = []
    if config.checkpoint is not None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*/step-\d{6}", config.checkpoint):
            raise SpecError("overrides.checkpoint must be <run>/step-XXXXXX, as GET /api/training/checkpoints lists.",
                            field="overrides.checkpoint")
        checkpoint = join(settings.runs_root, config.checkpoint)
        if not (Path(checkpoint) / "meta.json").exists():
            raise SpecError(f"overrides.checkpoint {config.checkpoint!r} does not exist; "
                            "see GET /api/training/checkpoints.", field="overrides.checkpoint")
        args += ["--checkpoint", checkpoint]
    else:
        args += ["--model", _check_model(config.model, settings, "overrides.model")]
    if config.dataset is not None:
        args += ["--dataset", _check_dataset(config.dataset, settings, "overrides.dataset"),
                 "--split", config.split or "test"]
    else:
        args += ["--benchmark", request.preset]
    args += ["--limit", str(config.limit), "--batch-size", str(config.batch_size), "--long-documents",
             config.long_documents, "--log-format", config.log_format, "--device", config.device, "--concurrency", str(config.concurrency),
             "--out", join(settings.storage, "evals", job_id, "report.json")]
    # Unset options stay unset: the script takes them from the checkpoint's template.
    for flag in ("layout", "max_pages", "prompt", "max_new_tokens", "num_beams", "no_repeat_ngram_size",
                 "repetition_penalty"):
        if getattr(config, flag) is not None:
            args += ["--" + flag.replace("_", "-"), str(getattr(config, flag))]
    if config.ray_data:
        args.append("--ray-data")
    # With Ray Data the model runs in GPU actors Ray places; without it, in the driver itself.
    num_gpus = 1 if config.device == "cuda" and not config.ray_data else 0
    return JobSpec(entrypoint=_command(settings, "ray_jobs.evaluate", args), run_name=job_id,
                   run_dir=join(settings.storage, "evals", job_id), total_steps=None, num_gpus=num_gpus,
                   config=dataclasses.asdict(config))


def upload_folder(settings: JobSettings, name: str) -> str:
    """Where `POST /api/datasets` stores the upload `name`: inside the folder its prepared dataset is written to,
    so a purge of its prepare_dataset job removes both."""
    return join(settings.datasets_root, name, "upload")


def _prepare(request: JobRequest, job_id: str, settings: JobSettings) -> JobSpec:
    # `upload:<name>` is the preset only POST /api/datasets gives (JobRequest's preset grammar has no colon), so
    # a client names an uploaded file by the name it chose, never by a path.
    uploaded = request.preset.startswith(UPLOAD_PREFIX)
    name = request.preset.removeprefix(UPLOAD_PREFIX) if uploaded else job_id
    if uploaded and not NAME_PATTERN.fullmatch(name):
        raise SpecError(f"name must be 1-64 letters, digits, '.', '_' or '-', not starting with one of the last "
                        f"three; got {name!r}.", field="name")
    if not uploaded and request.preset != "builtin" and request.preset not in PRESETS:
        raise SpecError(f"preset {request.preset!r} is not a dataset source; choose builtin or one of "
                        f"{sorted(PRESETS)}.", field="preset")
    _refuse(request.overrides, {"source": "it is the preset.", "output": "datasets go under DEEPSYNTH_STORAGE.",
                                "name": "the server names the dataset after the job (train on it with "
                                        "dataset=prepared:<job id>), or an upload after its name."})
    if uploaded:
        _refuse(request.overrides, {"text_field": "an upload's columns are mapped with its form's text_field.",
                                    "summary_field": "an upload's columns are mapped with its form's "
                                                     "summary_field."})
    known = {f.name for f in dataclasses.fields(PrepareConfig)} - {"source", "name"}
    unknown = sorted(set(request.overrides) - known)
    if unknown:
        raise SpecError(f"Unknown prepare_dataset keys {unknown}; known keys: {sorted(known)}.",
                        field=f"overrides.{unknown[0]}")
    source = UPLOAD_PREFIX + upload_folder(settings, name) if uploaded else request.preset
    values = {**request.overrides, "name": name, "source": source}
    if "model" in values:
        values["model"] = _check_model(values["model"], settings, "overrides.model")
    if values.get("trust_remote_code") and not settings.allow_remote_code:
        raise SpecError("overrides.trust_remote_code=true is not allowed on this server.",
                        field="overrides.trust_remote_code")
    config = _construct(PrepareConfig, values, "overrides")
    if uploaded and not set(config.splits) <= set(UPLOAD_SPLITS):
        raise SpecError(f"overrides.splits: an upload holds the splits {list(UPLOAD_SPLITS)}, got {config.splits}.",
                        field="overrides.splits")
    args = ["--name", config.name, "--source", config.source, "--splits", ",".join(config.splits),
            "--seed", str(config.seed), "--layout", config.layout, "--max-pages", str(config.max_pages),
            "--long-documents", config.long_documents,
            "--model", config.model, "--rows-per-shard", str(config.rows_per_shard), "--output", settings.storage]
    for flag, value in (("--limit", config.limit), ("--text-field", config.text_field),
                        ("--summary-field", config.summary_field)):
        if value is not None:
            args += [flag, str(value)]
    if config.trust_remote_code:
        args.append("--trust-remote-code")
    return JobSpec(entrypoint=_command(settings, "ray_jobs.prepare_dataset", args), run_name=config.name,
                   run_dir=join(settings.datasets_root, config.name), total_steps=None,
                   config={**dataclasses.asdict(config), "output": settings.storage})

