"""The step loop for one task, on HF accelerate.

accelerate owns devices, mixed precision and (later) DDP/DeepSpeed wrapping;
prism only decides what a step is: the method's loss on a batch of the task.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from prism.benchmarks.data import Batch
from prism.errors import ConfigError
from prism.methods.base import FitHandle, Method, TaskContext


@dataclass
class FitResult:
    steps: int
    samples: int
    seconds: float
    losses: list[float] = field(default_factory=list)

    @property
    def final_loss(self) -> float | None:
        tail = self.losses[-10:]
        return sum(tail) / len(tail) if tail else None


def batch_geometry(global_batch: int, micro_batch: int | None, world_size: int = 1) -> tuple[int, int]:
    """(per-device micro batch, gradient accumulation steps) giving ``global_batch`` samples a step."""
    micro = micro_batch or max(1, global_batch // world_size)
    if global_batch % (micro * world_size):
        raise ConfigError(
            f"[train] global_batch_size = {global_batch} is not a multiple of "
            f"micro_batch_size ({micro}) x processes ({world_size})",
            hint="choose a global batch divisible by micro batch x number of processes",
        )
    return micro, global_batch // (micro * world_size)


def total_steps(num_records: int, global_batch: int, epochs: float, max_steps: int | None) -> int:
    if max_steps is not None:
        return max_steps
    return max(1, math.ceil(epochs * num_records / global_batch))


class TaskFitter(FitHandle):
    """Trains the model on one task's encoded data; also the FitHandle methods see."""

    def __init__(self, *, model: Any, method: Method, dataset: Any, train_cfg: Any, seed: int,
                 accelerator: Any, log_path: Path | None = None, tasks_in_step: int = 1):
        self.model = model
        self.method = method
        self.dataset = dataset
        self.cfg = train_cfg
        self.seed = seed
        self.accelerator = accelerator
        self.device = accelerator.device
        self.log_path = log_path
        #: a joint run fits every task at once: [train] max_steps is per task, so it gets them all
        self.tasks_in_step = tasks_in_step

    # -- FitHandle -------------------------------------------------------------
    def batches(self, limit: int | None = None, batch_size: int | None = None) -> Iterator[Batch]:
        size = batch_size or batch_geometry(self.cfg.global_batch_size, self.cfg.micro_batch_size)[0]
        generator = torch.Generator().manual_seed(self.seed + 7919)
        for count, batch in enumerate(self.dataset.batches(size, generator=generator, shuffle=True)):
            if limit is not None and count >= limit:
                return
            yield batch.to(self.device)

    def forward(self, batch: Batch) -> Any:
        self.method.before_forward(batch, training=True)
        return self.model(**batch.model_inputs())

    def steps(self) -> int:
        cfg = self.cfg
        max_steps = None if cfg.max_steps is None else cfg.max_steps * self.tasks_in_step
        return total_steps(len(self.dataset), cfg.global_batch_size, cfg.epochs, max_steps)

    # -- training --------------------------------------------------------------
    def fit(self, task: TaskContext, on_step: Callable[[int, int, float], None] | None = None) -> FitResult:
        cfg = self.cfg
        micro, accumulation = batch_geometry(cfg.global_batch_size, cfg.micro_batch_size)
        steps = self.steps()
        params = [p for p in self.method.trainable_parameters() if p.requires_grad]
        if not params:
            raise ConfigError(
                f"method {self.method.id!r} has no trainable parameters for task {task.name!r}",
                hint="check [method] target_modules, or use zeroshot for a no-training baseline",
            )
        optimizer = torch.optim.AdamW(self._param_groups(params), lr=cfg.lr, weight_decay=cfg.weight_decay)
        scheduler = _scheduler(cfg, optimizer, steps)
        model, optimizer, scheduler = self.accelerator.prepare(self.model, optimizer, scheduler)
        model.train()
        generator = torch.Generator().manual_seed(self.seed)
        stream = self._endless(micro, generator)
        result = FitResult(steps=0, samples=0, seconds=0.0)
        started = time.perf_counter()
        log = open(self.log_path, "a", encoding="utf-8") if self.log_path else None
        try:
            for step in range(steps):
                optimizer.zero_grad(set_to_none=True)
                step_loss = 0.0
                for _ in range(accumulation):
                    batch = next(stream).to(self.device)
                    self.method.before_forward(batch, training=True)
                    outputs = model(**batch.model_inputs())
                    loss = self.method.loss(task, batch, outputs) / accumulation
                    self.accelerator.backward(loss)
                    step_loss += float(loss.detach())
                    result.samples += len(batch.records)
                if cfg.max_grad_norm:
                    self.accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                result.steps += 1
                result.losses.append(step_loss)
                if log is not None and (step % cfg.log_every == 0 or step == steps - 1):
                    log.write(json.dumps({
                        "task": task.name, "step": step + 1, "steps": steps, "loss": round(step_loss, 6),
                        "lr": scheduler.get_last_lr()[0],
                        "samples_per_s": round(result.samples / max(time.perf_counter() - started, 1e-9), 2),
                    }) + "\n")
                if on_step is not None:
                    on_step(step + 1, steps, step_loss)
        finally:
            if log is not None:
                log.close()
        result.seconds = time.perf_counter() - started
        model.eval()
        return result

    def _param_groups(self, params: list[torch.nn.Parameter]) -> list[dict[str, Any]]:
        """A separate learning rate for the projector when [train] projector_lr is set."""
        if self.cfg.projector_lr is None:
            return [{"params": params}]
        projector = {id(p) for n, p in self.model.named_parameters() if "multi_modal_projector" in n}
        groups = [{"params": [p for p in params if id(p) not in projector]},
                  {"params": [p for p in params if id(p) in projector], "lr": self.cfg.projector_lr}]
        return [g for g in groups if g["params"]]

    def _endless(self, micro: int, generator: torch.Generator) -> Iterator[Batch]:
        while True:
            produced = False
            for batch in self.dataset.batches(micro, generator=generator, shuffle=True, drop_last=True):
                produced = True
                yield batch
            if not produced:  # fewer records than one micro batch: use them all
                yield from self.dataset.batches(micro, generator=generator, shuffle=True, drop_last=False)


def _scheduler(cfg: Any, optimizer: torch.optim.Optimizer, steps: int):
    from transformers import get_scheduler

    name = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[cfg.lr_scheduler]
    warmup = int(round(cfg.warmup_ratio * steps))
    return get_scheduler(name, optimizer=optimizer, num_warmup_steps=warmup, num_training_steps=steps)
