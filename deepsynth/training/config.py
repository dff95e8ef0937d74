"""The training configuration: one flat, typed dataclass, validated where it is built.

A run is described by a YAML file under `ray_jobs/configs/` plus `key=value` overrides from the
command line; both map onto `TrainConfig`, and every mistake (an unknown key, a value of the
wrong type, a negative learning rate) fails at once with the flag's name and the fix.

    config = load_config("ray_jobs/configs/cpu_smoke.yaml", ["lr=1e-3", "max_steps=20"])
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from deepsynth.data.collate import DEFAULT_PROMPT
from deepsynth.data.long_documents import check_policy
from deepsynth.data.render import get_layout
from deepsynth.logs import LOG_FORMATS
from deepsynth.model.loading import DEFAULT_MODEL, resolve_dtype
from deepsynth.model.tokens import check_token_budget, layout_visual_tokens
from deepsynth.training.modes import LORA_PRESETS, check_lora_choice
from deepsynth.template import DEFAULT_LAYOUT, DEFAULT_MAX_PAGES

MODES = ("full", "lora", "qlora")
STRATEGIES = ("ddp", "deepspeed")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
OPTIMIZERS = ("adamw", "sgd")
# transformers 5.23's ExpertsInterface, plus its built-in loop.
EXPERTS_IMPLEMENTATIONS = ("eager", "batched_mm", "grouped_mm", "deepgemm", "sonicmoe")
# Inclusive bounds of the numeric knobs. The lower ones are what the loop needs; the upper ones sit far above
# any real run, so that a typo or a probe (max_length=10**12) fails here rather than in an allocation. The
# seed's is numpy's.
BOUNDS: dict[str, tuple[float, float]] = {
    "lora_rank": (1, 4096), "lora_alpha": (1, 65536), "train_limit": (1, 100_000_000), "val_limit": (1, 1_000_000),
    "max_pages": (1, 256), "max_length": (1, 131_072), "batch_size": (1, 4096), "grad_accum": (1, 4096),
    "weight_decay": (0, 10), "warmup_steps": (0, 100_000_000), "max_steps": (1, 100_000_000), "grad_clip": (0, 1e6),
    "seed": (0, 2**32 - 1), "eval_every": (1, 100_000_000), "log_every": (1, 100_000_000),
    "keep_checkpoints": (1, 1000), "num_workers": (1, 4096),
}
MAX_CPUS_PER_WORKER = 1024


@dataclass
class TrainConfig:
    # --- run ---
    run_name: str = "deepsynth"
    """Name of the run; re-running with the same name and storage_path resumes it."""
    storage_path: str = ".deepsynth/runs"
    """Where run folders go: a local path or a cloud URI (s3://, gs://) that Ray Train can write."""

    # --- model ---
    model: str = DEFAULT_MODEL
    """Hub id or local folder of the base model."""
    build_tiny_model: bool = False
    """Build the tiny offline model at `model` (a local folder) if it is not there yet."""
    dtype: str = "float32"
    """Weights dtype: auto, float32, bfloat16 or float16."""
    attn_implementation: str | None = None
    """e.g. sdpa, eager or flash_attention_2; None keeps the model's default."""
    experts_implementation: str | None = None
    """The routed experts' kernel: eager (a loop over experts), batched_mm or grouped_mm (one grouped GEMM, the GPU
    recipes' choice); None keeps transformers' default. QLoRA's 4-bit experts always loop."""
    trust_remote_code: bool = False
    """Passed to a DeepSeek-OCR v1 checkpoint's tokenizer; both families' models load natively without it."""

    # --- what trains ---
    mode: str = "lora"
    """full (the whole decoder), lora, or qlora (4-bit base + LoRA)."""
    lora_rank: int = 16
    """LoRA rank r: the width of each adapter (and of its trainable parameters)."""
    lora_alpha: int = 32
    """LoRA scaling numerator: adapters are scaled by lora_alpha / lora_rank."""
    lora_dropout: float = 0.05
    """Dropout on the adapters' input, in [0, 1); 0 when lora_targets include the routed experts."""
    lora_targets: str | list[str] = "default"
    """default (attention, dense MLP and shared experts: what vLLM serves), all (also the routed experts, through
    PEFT target_parameters), or a list of module suffixes (q_proj) and experts.gate_up_proj / experts.down_proj."""
    freeze_projector: bool = True
    """Keep the vision-to-text projector frozen (full mode; LoRA modes train adapters only). false trains it."""
    train_router: bool = False
    """Full mode: train the MoE router gates. Off by default: the model adds no load-balancing loss, so a trained
    router can collapse onto a few experts."""

    # --- data ---
    dataset: str = "builtin"
    """builtin, a preset (cnn_dailymail, xsum, ...), a local .jsonl/.csv/.parquet file, or prepared:<folder> (an absolute
    path or a cloud URI) for pages rendered ahead by ray_jobs.prepare_dataset (their layout is the one they were prepared with)."""
    text_field: str | None = None
    """Column of a local data file holding the document text; None means `text`."""
    summary_field: str | None = None
    """Column of a local data file holding the reference summary; None means `summary`."""
    train_limit: int | None = None
    """Training documents to use; None is the whole split (256 for builtin)."""
    val_limit: int = 32
    """Validation documents for the eval loss."""
    layout: str = DEFAULT_LAYOUT
    """Page layout to render text with (see deepsynth.data.render.LAYOUTS)."""
    max_pages: int = DEFAULT_MAX_PAGES
    """Most pages per document; what happens to longer ones is long_documents."""
    long_documents: str = "skip"
    """skip (leave documents over max_pages out, counted), truncate (keep their first max_pages pages) or error."""
    prompt: str = DEFAULT_PROMPT
    """Instruction placed after the page images, before the summary."""
    max_length: int = 2048
    """Longest sequence in tokens (image tokens included); only summaries are ever truncated. It must hold max_pages
    pages at the published checkpoint's token count for the layout, the prompt and a 32-token summary."""
    augment: bool = False
    """Text-safe augmentation of training pages."""
    blank_pages: bool = False
    """Ablation: replace every page with a blank one, to measure what the pages are worth."""

    # --- optimisation ---
    batch_size: int = 4
    """Documents per worker per micro-batch."""
    grad_accum: int = 1
    """Micro-batches accumulated per optimizer step."""
    lr: float = 2e-4
    """Peak learning rate, reached after warmup_steps, then cosine decay."""
    weight_decay: float = 0.0
    """Weight decay (decoupled for AdamW, L2 for SGD)."""
    optimizer: str = "adamw"
    """adamw, or sgd (plain, no momentum: each update is lr times the gradient, so the gradient's scale shows)."""
    warmup_steps: int = 10
    """Steps of linear warmup from 0 to lr."""
    max_steps: int = 1000
    """Optimizer steps of the whole run (the smoke knob)."""
    grad_clip: float = 1.0
    """Max gradient norm; 0 turns clipping off."""
    precision: str = "auto"
    """auto (bf16 on GPUs that have it, else fp32), fp32, bf16, or fp16 (with dynamic loss scaling)."""
    seed: int = 0
    """Seed for weights of new adapters, data order and augmentation."""

    # --- evaluation and checkpoints ---
    eval_every: int = 50
    """Steps between validation losses; each one also writes a checkpoint."""
    log_every: int = 10
    """Steps between metric reports."""
    log_format: str = "text"
    """text, or json: one JSON object per log line, from Ray's JSON logging (docs/observability.md)."""
    keep_checkpoints: int = 3
    """Checkpoints to keep, ranked by val loss; Ray Train also keeps the latest."""

    # --- scale ---
    num_workers: int = 1
    """Ray Train workers (one per GPU with use_gpu)."""
    use_gpu: bool = False
    """Give each worker one GPU (and train with NCCL); False trains on CPUs with gloo."""
    cpus_per_worker: float = 1.0
    """Logical CPUs each worker reserves (its data collation runs in them)."""
    strategy: str = "ddp"
    """ddp, or deepspeed (ZeRO, see zero_stage)."""
    zero_stage: int = 2
    """DeepSpeed ZeRO stage 1, 2 or 3 (with strategy=deepspeed)."""
    max_failures: int = 0
    """Worker failures to recover from (restarting from the last checkpoint); -1 is unlimited."""

    def __post_init__(self) -> None:
        _check_choice("mode", self.mode, MODES)
        _check_choice("strategy", self.strategy, STRATEGIES)
        _check_choice("precision", self.precision, PRECISIONS)
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("log_format", self.log_format, LOG_FORMATS)
        resolve_dtype(self.dtype)  # raises naming dtype and its choices
        try:
            get_layout(self.layout)
        except ValueError as err:
            raise ValueError(f"layout: {err}") from None
        check_policy(self.long_documents)
        if not self.run_name or "/" in self.run_name:
            raise ValueError(f"run_name must be a non-empty name without '/', got {self.run_name!r}.")
        if not 0 < self.lr <= 1:
            raise ValueError(f"lr must be positive and at most 1, got {self.lr}.")
        for name, (low, high) in BOUNDS.items():
            value = getattr(self, name)
            if value is not None and not low <= value <= high:
                raise ValueError(f"{name} must be in [{low}, {high}], got {value}.")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}.")
        if self.zero_stage not in (1, 2, 3):
            raise ValueError(f"zero_stage must be 1, 2 or 3, got {self.zero_stage}.")
        if not -1 <= self.max_failures <= 1000:
            raise ValueError(f"max_failures must be -1 (unlimited) or in [0, 1000], got {self.max_failures}.")
        if not 0 < self.cpus_per_worker <= MAX_CPUS_PER_WORKER:
            raise ValueError(f"cpus_per_worker must be positive and at most {MAX_CPUS_PER_WORKER}, "
                             f"got {self.cpus_per_worker}.")
        if self.train_limit is not None and self.train_limit < self.batch_size * self.num_workers:
            raise ValueError(
                f"train_limit={self.train_limit} is smaller than one step's documents "
                f"(batch_size * num_workers = {self.batch_size * self.num_workers}); raise train_limit."
            )
        if isinstance(self.lora_targets, str) and self.lora_targets not in LORA_PRESETS:
            self.lora_targets = [part.strip() for part in self.lora_targets.split(",") if part.strip()]
        if isinstance(self.lora_targets, list) and not all(isinstance(t, str) and t for t in self.lora_targets):
            raise ValueError(f"lora_targets must be {sorted(LORA_PRESETS)} or a non-empty list of module names, "
                             f"got {self.lora_targets!r}.")
        if not self.lora_targets:
            raise ValueError(f"lora_targets must be {sorted(LORA_PRESETS)} or name at least one module.")
        check_lora_choice(self.mode, self.lora_targets, self.lora_dropout)
        if self.experts_implementation is not None:
            _check_choice("experts_implementation", self.experts_implementation, EXPERTS_IMPLEMENTATIONS)
            if self.mode == "qlora" and self.experts_implementation != "eager":
                raise ValueError("mode=qlora runs its 4-bit experts one at a time; leave experts_implementation unset "
                                 f"(or eager), got {self.experts_implementation!r}.")
        if self.mode == "qlora" and self.strategy == "deepspeed":
            raise ValueError("mode=qlora does not combine with strategy=deepspeed; use strategy=ddp for QLoRA.")
        # Against the published checkpoint's arithmetic: a tiny model never costs more tokens per page.
        check_token_budget(max_pages=self.max_pages, page_tokens=layout_visual_tokens(self.layout),
                           prompt=self.prompt, max_length=self.max_length)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}.")


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Read a YAML config and apply `key=value` overrides; raise naming the first bad key or value."""
    values: dict[str, Any] = {}
    if path is not None:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path} must hold a mapping of config keys, got {type(loaded).__name__}.")
        values.update(loaded)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"Override {item!r} must look like key=value, e.g. lr=1e-4.")
        values[key.strip()] = yaml.safe_load(raw)
    return config_from_dict(values, source=str(path) if path else "overrides")


def config_from_dict(values: dict[str, Any], source: str = "config") -> TrainConfig:
    """Build a TrainConfig from plain values, checking names and types before __post_init__ runs."""
    hints = typing.get_type_hints(TrainConfig)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    for key, value in values.items():
        if key not in known:
            close = difflib.get_close_matches(key, known, n=3)
            hint = f" Did you mean {' or '.join(close)}?" if close else ""
            raise ValueError(f"Unknown config key {key!r} in {source}.{hint} Known keys: {sorted(known)}.")
        values[key] = _coerce(key, value, hints[key])
    return TrainConfig(**values)


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Accept YAML's natural types for a field (an int for a float, a string for a list) or raise naming the key."""
    allowed = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if value is None and type(None) in allowed:
        return None
    for kind in allowed:
        origin = typing.get_origin(kind) or kind
        if origin is float and not isinstance(value, bool):
            number = _float(value)
            if number is not None:
                if not math.isfinite(number):  # YAML reads .nan and .inf
                    raise ValueError(f"Config key {key!r} must be a finite number, got {value!r}.")
                return number
        if origin is list and isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        if origin in (int, str, bool, list) and isinstance(value, origin) and not (
            origin is int and isinstance(value, bool)
        ):
            return value
    raise ValueError(f"Config key {key!r} expects {hint}, got {value!r} ({type(value).__name__}).")


def _float(value: Any) -> float | None:
    """A number, or a string YAML 1.1 left unparsed ("1e-3", without a dot), as a float; else None."""
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None
