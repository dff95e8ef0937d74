"""The training loop: one function that Ray Train runs on every worker.

It reads top to bottom: set up the model, optimizer and strategy; restore a checkpoint if
Ray Train hands one over; set up this worker's data; then train, evaluating, checkpointing and
reporting as it goes, until `max_steps` or a stop request. `ray_jobs/train.py` wires it into a
`TorchTrainer`.

The loss of a step is the mean over every summary token of the step, across micro-batches and
workers (`num_items_in_batch`), so 2 workers with batch b train exactly like 1 worker with
batch 2b, and the reported loss does not depend on how the batch was split.

Documents over `max_pages` pages follow `long_documents` (skip, truncate or error), decided once
from page counts before anything renders; the counts go into every metrics record.
"""

from __future__ import annotations

import json
import math
import random
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from deepsynth.data.augment import AugmentConfig
from deepsynth.data.collate import Batch, SummaryCollator
from deepsynth.data.datasets import load_records
from deepsynth.logs import configure_logging
from deepsynth.model.inputs import placement, to_model
from deepsynth.model.tokens import v1_mode_for
from deepsynth.training.checkpoint import (
    PENDING_META,
    checkpoint_meta,
    file_sizes,
    load_trained_weights,
    publish_meta,
    publish_missing_meta,
    restore_rng_state,
    rng_state,
    save_model_files,
    step_dir_name,
    unpublish_meta,
    write_checkpoint,
)
from deepsynth.training.config import TrainConfig
from deepsynth.training.control import StopPoller
from deepsynth.training.data import PageBatches, PageOptions, ValidationBatch, select_documents, validation_batches
from deepsynth.training.modes import load_for_training, prepare_trainable, trainable_share
from deepsynth.training.strategy import DDPStrategy, DeepSpeedStrategy, Strategy, deepspeed_config
from deepsynth.training.telemetry import MetricsLog, TrainGauges, checkpoint_uri, gpu_stats, peak_memory_mb


def train_loop_per_worker(config_dict: dict) -> None:
    config = TrainConfig(**config_dict)
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    seed_everything(config.seed)
    amp_dtype = autocast_dtype(config.precision, device)

    # --- model, optimizer, schedule, strategy ---
    model, processor, family = load_for_training(
        config.model, config.mode, dtype=config.dtype, device=str(device),
        attn_implementation=config.attn_implementation, experts_implementation=config.experts_implementation,
        trust_remote_code=config.trust_remote_code, compute_dtype=amp_dtype or torch.float32,
        v1_mode=v1_mode_for(config.layout),
    )
    model, param_table = prepare_trainable(
        model, family, config.mode, rank=config.lora_rank, alpha=config.lora_alpha, dropout=config.lora_dropout,
        targets=config.lora_targets, freeze_projector=config.freeze_projector, train_router=config.train_router,
    )
    checkpoint = ray.train.get_checkpoint()  # set when resuming a run or restarting after a failure
    if checkpoint:
        with checkpoint.as_directory() as folder:
            load_trained_weights(model, Path(folder), config.mode)
    optimizer = make_optimizer(config, [p for p in model.parameters() if p.requires_grad])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(config.warmup_steps, config.max_steps))
    strategy = make_strategy(config, model, optimizer, scheduler, amp_dtype)
    _, input_dtype = placement(strategy.model)  # after the strategy: DeepSpeed casts the model to bf16/fp16

    start_step, position, val_loss = 0, 0, None
    if checkpoint:
        with checkpoint.as_directory() as folder:
            strategy.load_state(Path(folder))
            state = torch.load(Path(folder) / f"rank-{rank}.pt", weights_only=False)
            if rank == 0 and (Path(folder) / PENDING_META).exists():
                # Ray Train resumes from the checkpoint it registered last; a kill after registering it but
                # before meta.json was written left it complete but unmarked.
                publish_missing_meta(checkpoint_uri(config.storage_path, config.run_name, step_dir_name(state["step"])),
                                     json.loads((Path(folder) / PENDING_META).read_text()))
        restore_rng_state(state["rng"])
        start_step, position, val_loss = state["step"], state["position"], state["val_loss"]

    # --- data: this worker's shard of the rendered documents ---
    collate = SummaryCollator(family, prompt=config.prompt, max_length=config.max_length)
    truncate = config.long_documents == "truncate"
    train_options = PageOptions(config.layout, config.max_pages, AugmentConfig() if config.augment else None,
                                config.blank_pages, truncate)
    val_options = PageOptions(config.layout, config.max_pages, None, config.blank_pages, truncate)
    records, train_long = select_documents(split_records(config, "train"), train_options, config.long_documents)
    val_records, val_long = select_documents(split_records(config, "validation"), val_options, config.long_documents)
    long_documents = {"skipped_documents": train_long.skipped, "truncated_documents": train_long.truncated,
                      "val_skipped_documents": val_long.skipped, "val_truncated_documents": val_long.truncated}
    if rank == 0 and any(long_documents.values()):
        print(f"Documents over max_pages={config.max_pages} (long_documents={config.long_documents}): "
              f"{long_documents}", flush=True)
    page_batches = PageBatches(
        records, rank=rank, world_size=world_size, batch_size=config.batch_size, seed=config.seed,
        options=train_options, collate=collate, start_micro_batch=position,
    )
    train_batches = iter(page_batches)
    val_batches = validation_batches(val_records, rank=rank, world_size=world_size, batch_size=config.batch_size,
                                     options=val_options, collate=collate)
    stop = StopPoller(config.run_name)
    configure_logging(config.log_format, run_name=config.run_name, rank=rank)
    gauges = TrainGauges(config.run_name, rank)
    mirror = f"{config.storage_path.rstrip('/')}/{config.run_name}/logs/metrics.jsonl" if "://" in config.storage_path \
        else None
    log = MetricsLog(log_dir(config), config.run_name, config.to_dict(), mirror) if rank == 0 else None
    if val_loss is None:
        val_loss = evaluate(strategy.model, val_batches, device, input_dtype, amp_dtype)
        if log:
            log.log(start_step, {"val_loss": val_loss, "trainable_share": trainable_share(param_table),
                                 "trainable_parameters": param_table[-1].trainable,
                                 **long_documents})

    # --- train ---
    window = Window()
    for step in range(start_step + 1, config.max_steps + 1):
        t_data = time.perf_counter()
        micro_batches = [next(train_batches) for _ in range(config.grad_accum)]
        t_compute = time.perf_counter()
        step_tokens = all_reduce_sum(sum(b.num_target_tokens for b in micro_batches), device)

        strategy.model.train()
        loss_sum = 0.0
        for i, batch in enumerate(micro_batches):
            with amp_context(device, amp_dtype):
                loss = strategy.model(**to_model(batch.inputs, device, input_dtype), num_items_in_batch=step_tokens).loss
            strategy.backward(loss * world_size, last_micro_batch=i == len(micro_batches) - 1)
            loss_sum += loss.item()  # a CPU-GPU sync point, once per micro-batch
        grad_norm = strategy.step()
        step_loss = all_reduce_sum(loss_sum, device)
        window.add(micro_batches, t_compute - t_data, time.perf_counter() - t_compute, world_size)

        evaluate_now = step % config.eval_every == 0 or step == config.max_steps
        stopping = all_reduce_sum(float(stop.requested(step)), device) > 0
        if evaluate_now:
            val_loss = evaluate(strategy.model, val_batches, device, input_dtype, amp_dtype)
        metrics = {"step": step, "time": time.time(), "epoch": page_batches.epoch, "loss": step_loss, "val_loss": val_loss,
                   "lr": strategy.lr(), "grad_norm": grad_norm, **window.rates(), "peak_memory_mb": peak_memory_mb(device),
                   **gpu_stats(device), "trainable_parameters": param_table[-1].trainable, **long_documents}
        gauges.set(metrics)
        if log:
            log.log(step, metrics)
            if evaluate_now or step % config.log_every == 0:
                log.progress(step, config.max_steps, metrics)

        if evaluate_now or stopping:
            report_with_checkpoint(config, step, metrics, strategy, model, processor, family.name, rank,
                                   position=step * config.grad_accum)
            if log:
                log.checkpoint(checkpoint_uri(config.storage_path, config.run_name, step_dir_name(step)))
        elif step % config.log_every == 0:
            ray.train.report(metrics)
        if evaluate_now or step % config.log_every == 0:
            window = Window()
        if stopping:
            break
    if log:
        log.close()


def report_with_checkpoint(config: TrainConfig, step: int, metrics: dict, strategy: Strategy, model, processor,
                           family_name: str, rank: int, position: int) -> None:
    """Every rank writes its part of `step-XXXXXX/` and reports it; Ray Train merges and persists them.

    Ray Train's copy to storage is file by file, so meta.json, the mark of a complete checkpoint,
    is left out of it and written by rank 0 once every rank's report (a synchronous upload) has
    returned. A folder being written again (a resumed run repeating a step) loses its meta.json first.
    """
    weights = strategy.trained_weights()  # every rank: a collective under ZeRO-3
    in_storage = checkpoint_uri(config.storage_path, config.run_name, step_dir_name(step))
    if rank == 0:
        unpublish_meta(in_storage)

    def write(folder: Path) -> None:
        if rank == 0:
            save_model_files(folder, model=model, processor=processor, config=config, weights=weights)
        strategy.save_state(folder, rank)
        torch.save({"step": step, "position": position, "val_loss": metrics["val_loss"], "rng": rng_state()},
                   folder / f"rank-{rank}.pt")

    with tempfile.TemporaryDirectory(prefix="deepsynth-ckpt-") as staging:
        path = write_checkpoint(staging, step, write)
        files = gather_file_sizes(file_sizes(path))
        meta = checkpoint_meta(step=step, config=config, family_name=family_name, metrics=metrics, files=files)
        if rank == 0:
            # Kept with the resume state, so a resume can mark a checkpoint that a crash left unmarked.
            (path / PENDING_META).write_text(json.dumps(meta, indent=2))
            meta["files"][PENDING_META] = (path / PENDING_META).stat().st_size
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(path),
                         checkpoint_dir_name=step_dir_name(step))
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()  # every rank's report has returned: its files are in storage
    if rank == 0:
        publish_meta(in_storage, meta)


def gather_file_sizes(mine: dict[str, int]) -> dict[str, int]:
    """Every rank's checkpoint files (they share one folder in storage), on every rank."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return mine
    gathered: list[dict[str, int]] = [{} for _ in range(dist.get_world_size())]
    dist.all_gather_object(gathered, mine)
    return {name: size for files in gathered for name, size in files.items()}


def make_optimizer(config: TrainConfig, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


@torch.no_grad()
def evaluate(model, batches: list[ValidationBatch], device: torch.device, input_dtype: torch.dtype,
             amp_dtype: torch.dtype | None) -> float:
    """Mean loss per summary token over the whole validation set, across workers.

    Every rank runs the same number of forward passes (DDP and ZeRO-3 run collectives in each);
    padding batches run but their loss is left out, so the mean is over the real documents only.
    """
    model.eval()
    loss_sum, tokens = 0.0, 0
    for batch in batches:
        with amp_context(device, amp_dtype):
            # num_items_in_batch=1 makes the model return the summed loss over the batch's tokens.
            loss = model(**to_model(batch.batch.inputs, device, input_dtype), num_items_in_batch=1).loss.item()
        if not batch.padding:
            loss_sum += loss
            tokens += batch.batch.num_target_tokens
    return all_reduce_sum(loss_sum, device) / max(1.0, all_reduce_sum(tokens, device))


class Window:
    """Throughput and data-wait share since the last report, and the last step's own times."""

    def __init__(self) -> None:
        self.steps = self.samples = self.tokens = self.visual_tokens = 0
        self.data_wait = self.compute = self.last_data_wait = self.last_compute = 0.0

    def add(self, micro_batches: list[Batch], data_wait: float, compute: float, world_size: int) -> None:
        # Every worker does the same, so this worker's counts times world_size estimate the global rates.
        self.samples += world_size * sum(b.num_examples for b in micro_batches)
        self.tokens += world_size * sum(int(b.inputs["attention_mask"].sum()) for b in micro_batches)
        self.visual_tokens += world_size * sum(b.num_visual_tokens for b in micro_batches)
        self.steps += 1
        self.last_data_wait, self.last_compute = data_wait, compute
        self.data_wait += data_wait
        self.compute += compute

    def rates(self) -> dict[str, float]:
        elapsed = max(self.data_wait + self.compute, 1e-9)
        return {
            "samples_per_s": self.samples / elapsed,
            "tokens_per_s": self.tokens / elapsed,
            "visual_tokens_per_s": self.visual_tokens / elapsed,
            "data_wait_share": self.data_wait / elapsed,
            # This step's own times, so a log of every step adds up exactly.
            "data_wait_s": self.last_data_wait,
            "compute_s": self.last_compute,
        }


def make_strategy(config: TrainConfig, model, optimizer, scheduler, amp_dtype) -> Strategy:
    if config.strategy == "deepspeed":
        return DeepSpeedStrategy(model, optimizer, scheduler, deepspeed_config(
            zero_stage=config.zero_stage, micro_batch_size=config.batch_size, grad_accum=config.grad_accum,
            grad_clip=config.grad_clip, amp_dtype=amp_dtype))
    # A 4-bit model is already placed by bitsandbytes and must not be moved again.
    move = config.mode != "qlora"
    scaler = torch.amp.GradScaler(ray.train.torch.get_device().type) if amp_dtype == torch.float16 else None
    return DDPStrategy(model, optimizer, scheduler, config.grad_clip,
                       prepare_model=lambda m: ray.train.torch.prepare_model(m, move_to_device=move), scaler=scaler)


def split_records(config: TrainConfig, split: str) -> list[dict]:
    limit = config.train_limit if split == "train" else config.val_limit
    return load_records(config.dataset, split, limit, seed=config.seed, text_field=config.text_field,
                        summary_field=config.summary_field)


def warmup_cosine(warmup_steps: int, max_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of `precision`; None means plain fp32.

    `auto` is bf16 on a GPU that has it and fp32 elsewhere, never fp16: fp16 needs loss scaling,
    which a user should choose knowingly (precision=fp16).
    """
    if precision == "fp32":
        return None
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if precision == "bf16" else torch.float16


def amp_context(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device_type=device.type, dtype=dtype) if dtype is not None else nullcontext()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def all_reduce_sum(value: float, device: torch.device) -> float:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return float(value)
    tensor = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor.item())


def log_dir(config: TrainConfig) -> Path:
    """The run's log folder: beside its checkpoints for local storage, a local folder for cloud URIs (whose
    metrics.jsonl MetricsLog mirrors to storage)."""
    if "://" in config.storage_path:
        return Path(tempfile.gettempdir()) / "deepsynth-logs" / config.run_name
    return Path(config.storage_path) / config.run_name / "logs"
