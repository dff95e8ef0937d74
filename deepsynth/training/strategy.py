"""Distributed strategies: DDP (through Ray Train) and DeepSpeed ZeRO, behind one small protocol.

The training loop calls `backward(loss)` per micro-batch, `step()` once per optimizer step,
and `save_state` / `load_state` / `trained_weights` around checkpoints; it never asks which
strategy runs. DeepSpeed is imported only when chosen.

Gradients: the loop's loss is already the mean over every target token of the step, across
micro-batches and workers. Both strategies average gradients over workers, so the loop
multiplies the loss by the world size before `backward`; the result equals one worker
training on the whole global batch.

fp16: small fp16 gradients underflow to zero, so fp16 always runs with dynamic loss scaling,
a `torch.amp.GradScaler` under DDP and DeepSpeed's own loss scaler under DeepSpeed. bf16 has
fp32's range and needs none.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
from torch import nn

from deepsynth.training.checkpoint import trained_state_dict

OPTIMIZER_FILE = "optimizer.pt"


class Strategy(Protocol):
    model: nn.Module
    """What to call forward on (DDP- or DeepSpeed-wrapped)."""

    def backward(self, loss: torch.Tensor, last_micro_batch: bool) -> None: ...

    def step(self) -> float:
        """Clip, step the optimizer and the schedule, zero the gradients; return the gradient norm."""
        ...

    def lr(self) -> float: ...

    def trained_weights(self) -> dict[str, torch.Tensor]:
        """Full (gathered) trained tensors on CPU; a collective under ZeRO-3, so every rank calls it."""
        ...

    def save_state(self, folder: Path, rank: int) -> None: ...

    def load_state(self, folder: Path) -> None: ...


class DDPStrategy:
    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, grad_clip: float,
                 prepare_model: Callable[[nn.Module], nn.Module], scaler: torch.amp.GradScaler | None = None):
        self.unwrapped = model
        self.model = prepare_model(model)  # ray.train.torch.prepare_model: device placement and DDP when world_size > 1
        self.optimizer, self.scheduler, self.grad_clip = optimizer, scheduler, grad_clip
        self.scaler = scaler
        """Loss scaling for fp16; None for fp32 and bf16."""
        self.params = [p for p in model.parameters() if p.requires_grad]

    def backward(self, loss: torch.Tensor, last_micro_batch: bool) -> None:
        # Skip the gradient all-reduce on all but the last micro-batch of an accumulated step.
        sync = last_micro_batch or not hasattr(self.model, "no_sync")
        with contextlib.nullcontext() if sync else self.model.no_sync():
            (self.scaler.scale(loss) if self.scaler else loss).backward()

    def step(self) -> float:
        if self.scaler:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip if self.grad_clip > 0 else float("inf"))
        if self.scaler:
            self.scaler.step(self.optimizer)  # skipped if the scaled gradients overflowed; the scale then halves
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def trained_weights(self) -> dict[str, torch.Tensor]:
        return trained_state_dict(self.unwrapped)

    def save_state(self, folder: Path, rank: int) -> None:
        if rank == 0:  # DDP replicas hold identical optimizer states
            state = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}
            if self.scaler:
                state["scaler"] = self.scaler.state_dict()
            torch.save(state, folder / OPTIMIZER_FILE)

    def load_state(self, folder: Path) -> None:
        state = torch.load(folder / OPTIMIZER_FILE, map_location="cpu", weights_only=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler:
            self.scaler.load_state_dict(state["scaler"])


def deepspeed_config(*, zero_stage: int, micro_batch_size: int, grad_accum: int, grad_clip: float,
                     amp_dtype: torch.dtype | None) -> dict:
    """DeepSpeed's config for our loop: ZeRO stage, batch shape, clipping and mixed precision."""
    return {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": grad_accum,
        "gradient_clipping": grad_clip,
        "zero_optimization": {"stage": zero_stage},
        "bf16": {"enabled": amp_dtype == torch.bfloat16},
        # loss_scale 0 is DeepSpeed's dynamic loss scaling, starting at 2**16.
        "fp16": {"enabled": amp_dtype == torch.float16, "loss_scale": 0, "initial_scale_power": 16},
        "steps_per_print": 10**9,  # our loop reports metrics; DeepSpeed's own prints are noise
    }


class DeepSpeedStrategy:
    TAG = "state"

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, config: dict):
        import deepspeed

        self.zero_stage = config["zero_optimization"]["stage"]
        self.model, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=config
        )

    def backward(self, loss: torch.Tensor, last_micro_batch: bool) -> None:
        # The loss is already normalised over the whole step; DeepSpeed must not divide it by
        # the accumulation steps again. engine.step() is a no-op except at the step boundary.
        self.model.backward(loss, scale_wrt_gas=False)
        self.model.step()

    def step(self) -> float:
        norm = self.model.get_global_grad_norm()
        return float(norm) if norm is not None else 0.0

    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def trained_weights(self) -> dict[str, torch.Tensor]:
        import deepspeed

        module = self.model.module
        params = [p for p in module.parameters() if p.requires_grad]
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None, enabled=self.zero_stage == 3):
            return trained_state_dict(module)

    def save_state(self, folder: Path, rank: int) -> None:
        # A collective: every rank writes its own optimizer (and, under ZeRO-3, parameter) shards.
        self.model.save_checkpoint(str(folder / "deepspeed"), tag=self.TAG, exclude_frozen_parameters=True)

    def load_state(self, folder: Path) -> None:
        self.model.load_checkpoint(
            str(folder / "deepspeed"), tag=self.TAG, load_module_strict=False,
            load_optimizer_states=True, load_lr_scheduler_states=True,
        )
