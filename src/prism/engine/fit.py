"""The step loop for one task, on HF accelerate.

accelerate owns devices, mixed precision and DDP/DeepSpeed wrapping; prism only
decides what a step is: the method's loss on a batch of the task. How a micro-batch's
forward and backward run (plain/DDP or inside a DeepSpeed engine) is the step
backend's business (``prism.engine.step_backend``); this loop has no backend branches.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from prism.benchmarks.data import Batch
from prism.engine.data_loader import MicroBatchLoader, resolve_num_workers
from prism.engine.data_stream import DataStream
from prism.engine.forward_plan import END_TASK_PASS, model_inputs, plan_forward
from prism.engine.interrupt import Interrupted, deferred_interrupt
from prism.engine.metrics_log import MetricsLog
from prism.engine.seeding import capture_rng
from prism.engine.step_backend import step_backend
from prism.engine.step_checkpoint import FitState, StepCheckpointer
from prism.errors import CheckpointError, ConfigError
from prism.methods.base import FitHandle, Method, TaskContext


@dataclass
class FitResult:
    steps: int
    samples: int
    seconds: float
    losses: list[float] = field(default_factory=list)
    #: non-padding tokens processed by this fit() call, summed over ranks (cost accounting)
    tokens: int = 0
    #: samples a step checkpoint had already taken before this call (0 unless resumed mid-task)
    resumed_samples: int = 0

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
                 accelerator: Any, log_path: Path | None = None, tasks_in_step: int = 1,
                 step_offset: int = 0, deepspeed: Any = None):
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
        #: optimizer steps taken by earlier tasks of the run (a rising step axis for trackers)
        self.step_offset = step_offset
        #: how a step runs: plain/DDP, or in a DeepSpeed engine (``deepspeed``: a prism.engine.zero.DeepSpeedRun)
        self.backend = step_backend(accelerator, deepspeed)
        #: (micro batch, processes, accumulation, global micro-batches consumed) of the last fit
        self._served: tuple[int, int, int, int] | None = None

    # -- FitHandle -------------------------------------------------------------
    def batches(self, limit: int | None = None, batch_size: int | None = None) -> Iterator[Batch]:
        size = batch_size or batch_geometry(self.cfg.global_batch_size, self.cfg.micro_batch_size)[0]
        generator = torch.Generator().manual_seed(self.seed + 7919)
        for count, batch in enumerate(self.dataset.batches(size, generator=generator, shuffle=True)):
            if limit is not None and count >= limit:
                return
            yield batch.to(self.device)

    def forward(self, batch: Batch) -> Any:
        plan = plan_forward(self.method, batch, END_TASK_PASS)
        return self.model(**model_inputs(batch, plan))

    def served_records(self) -> list[dict]:
        if self._served is None:
            return []
        micro, world, accumulation, count = self._served
        indices = self._stream(micro, 0, world, accumulation).served_indices(count)
        return [self.dataset.record(i) for i in indices]

    def _stream(self, micro: int, rank: int, world: int, accumulation: int) -> DataStream:
        """The fit's data order: length-grouped when the dataset knows its records' lengths."""
        lengths = getattr(self.dataset, "modality_lengths", None)
        if getattr(self.cfg, "group_by_modality_length", None) is False:
            lengths = None
        return DataStream(self.dataset, micro, self.seed, rank=rank, world=world, accumulation=accumulation,
                          lengths=lengths() if lengths is not None else None)

    def steps(self) -> int:
        cfg = self.cfg
        max_steps = None if cfg.max_steps is None else cfg.max_steps * self.tasks_in_step
        return total_steps(len(self.dataset), cfg.global_batch_size, cfg.epochs, max_steps)

    # -- training --------------------------------------------------------------
    def fit(self, task: TaskContext, on_step: Callable[[int, int, float], None] | None = None, *,
            checkpointer: StepCheckpointer | None = None) -> FitResult:
        """Run the task's optimizer steps; continue from ``checkpointer``'s step checkpoint if it has one."""
        cfg = self.cfg
        world = self.accelerator.num_processes
        micro, accumulation = batch_geometry(cfg.global_batch_size, cfg.micro_batch_size, world)
        steps = self.steps()
        named = self._trainable_named()
        params = list(named.values())
        optimizer = torch.optim.AdamW(self._param_groups(params), lr=cfg.lr, weight_decay=cfg.weight_decay)
        scheduler = _scheduler(cfg, optimizer, steps)
        stream = self._stream(micro, self.accelerator.process_index, world, accumulation)
        result = FitResult(steps=0, samples=0, seconds=0.0)
        resume = checkpointer.load() if checkpointer is not None else None
        if resume is not None:
            self._restore(resume, named, optimizer, scheduler, stream, steps, result)
        if cfg.gradient_checkpointing:
            # non-reentrant checkpointing needs no input that requires grad (the base is frozen)
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        # the scheduler stays ours: accelerate would step it once per process, since its
        # batches are per device; prism's step already means one global batch
        backend = self.backend
        model, optimizer = backend.prepare(self.model, optimizer, method=self.method, task=task, micro_batch=micro,
                                           accumulation=accumulation, max_grad_norm=cfg.max_grad_norm)
        if resume is not None:
            backend.restore_after_prepare(named, resume.trainable, optimizer, resume.optimizer,
                                          resume.rng[self.accelerator.process_index])
        model.train()
        cuda = torch.device(self.device).type == "cuda"
        loader = MicroBatchLoader(stream, num_workers=resolve_num_workers(getattr(cfg, "num_workers", None), world,
                                                                          cuda=cuda), pin_memory=cuda, seed=self.seed)
        started = time.perf_counter()
        local_tokens, result.resumed_samples = 0, result.samples
        metrics = MetricsLog(self.log_path, self.accelerator, task.name, steps,
                             step_offset=self.step_offset, samples_before=result.samples, every=cfg.log_every)
        try:
            with deferred_interrupt() as interrupt:
                for step in range(result.steps, steps):
                    if self._any_rank(interrupt.requested):
                        if checkpointer is not None:
                            checkpointer.save(self._state(result, steps, named, optimizer, scheduler, stream))
                        raise Interrupted(f"training interrupted in task {task.name!r} after step {step}/{steps}",
                                          hint="run the same `prism train` again to continue from this step")
                    optimizer.zero_grad(set_to_none=True)
                    step_loss = 0.0
                    micro_batches = [loader.next() for _ in range(accumulation)]
                    weights = self._token_weights(micro_batches)
                    for position, (batch, weight) in enumerate(zip(micro_batches, weights)):
                        batch = batch.to(self.device)
                        loss = backend.micro_step(model, self.method, task, batch, weight,
                                                  last=position == len(micro_batches) - 1)
                        step_loss += float(loss.detach())
                        result.samples += len(batch.records) * world
                        local_tokens += int(batch.attention_mask.sum())
                    backend.end_micro_steps()
                    if self.method.edits_gradients:
                        self.method.on_gradients(task, named)
                    grad_norm = None
                    if cfg.max_grad_norm:
                        # DeepSpeed: clipped inside the engine's step; this only reads the norm
                        grad_norm = self.accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
                    optimizer.step()  # DeepSpeed: a no-op, the engine stepped in backward()
                    scheduler.step()
                    result.steps += 1
                    self.method.after_step(task, result.steps)
                    result.losses.append(step_loss)
                    metrics.step(result, step_loss, scheduler.get_last_lr()[0], grad_norm,
                                 time.perf_counter() - started)
                    if on_step is not None:
                        on_step(step + 1, steps, step_loss)
                    if checkpointer is not None and checkpointer.due(result.steps, steps):
                        checkpointer.save(self._state(result, steps, named, optimizer, scheduler, stream))
        finally:
            loader.close()
            metrics.close()
        result.seconds = time.perf_counter() - started
        result.tokens = self._sum_over_ranks(local_tokens)
        self._served = (micro, world, accumulation, result.steps * accumulation * world)
        model.eval()
        backend.after_fit(self.model)
        return result

    def _trainable_named(self) -> dict[str, torch.nn.Parameter]:
        """The method's trainable parameters by their name in the model (names key step checkpoints)."""
        wanted = {id(p) for p in self.method.trainable_parameters() if p.requires_grad}
        named = {n: p for n, p in self.model.named_parameters() if id(p) in wanted}
        if not named:
            raise ConfigError(
                f"method {self.method.id!r} has no trainable parameters",
                hint="check [method] target_modules, or use zeroshot for a no-training baseline",
            )
        return named

    def _state(self, result: FitResult, steps: int, named: dict[str, torch.nn.Parameter], optimizer: Any,
               scheduler: Any, stream: DataStream) -> FitState:
        """The step loop's state; every rank calls this (DeepSpeed gathers shards, RNGs are gathered)."""
        trainable = self.backend.trainable_state(named)
        optimizer_state, engine = self.backend.optimizer_state(optimizer), self.backend.engine_info()
        return FitState(step=result.steps, steps=steps, samples=result.samples, losses=list(result.losses),
                        trainable=trainable, optimizer=optimizer_state, scheduler=scheduler.state_dict(),
                        data=stream.state(), rng=self._rng_of_every_rank(), engine=engine,
                        method=self.method.step_state())

    def _token_weights(self, micro_batches: list[Batch]) -> list[float]:
        """Loss weights making a step the mean over every answer token of the global batch.

        Each micro-batch's loss is a mean over its own tokens; weighting it by its share of
        the step's tokens (times the number of processes, which DDP averages over) gives the
        same gradient however the global batch is split into processes and accumulation
        steps. With equal token counts the weight is 1 / accumulation.
        """
        counts = [int((b.labels[:, 1:] != -100).sum()) for b in micro_batches]
        total = float(sum(counts))
        world = self.accelerator.num_processes
        if world > 1:
            total = float(self.accelerator.reduce(torch.tensor([total], device=self.device), reduction="sum").item())
        if total == 0:
            return [1.0 / len(micro_batches)] * len(micro_batches)
        return [n * world / total for n in counts]

    def _sum_over_ranks(self, count: int) -> int:
        if self.accelerator.num_processes == 1:
            return count
        total = self.accelerator.reduce(torch.tensor([count], dtype=torch.int64, device=self.device), reduction="sum")
        return int(total.item())

    def _any_rank(self, flag: bool) -> bool:
        """True on every rank when it is true on one (all ranks must stop at the same step)."""
        if self.accelerator.num_processes == 1:
            return flag
        total = self.accelerator.reduce(torch.tensor([float(flag)], device=self.device), reduction="sum")
        return bool(total.item() > 0)

    def _rng_of_every_rank(self) -> list[Any]:
        """Each rank's RNG state (dropout differs per rank), gathered so rank 0 can save them all."""
        state = capture_rng()
        if self.accelerator.num_processes == 1:
            return [state]
        from accelerate.utils import gather_object

        return gather_object([state])

    def _restore(self, state: FitState, named: dict[str, torch.nn.Parameter], optimizer: Any, scheduler: Any,
                 stream: DataStream, steps: int, result: FitResult) -> None:
        if state.steps != steps or set(state.trainable) != set(named):
            raise CheckpointError(
                f"the step checkpoint does not fit this task: {state.steps} steps and "
                f"{len(state.trainable)} trainable tensors saved, {steps} and {len(named)} now",
                hint="pass --restart, or delete the steps/ folder of this run to redo the task")
        mine = self.backend.engine_info()
        if state.engine != mine:
            raise CheckpointError(
                f"the step checkpoint's optimizer state was written by {_engine_name(state.engine)}, "
                f"this run uses {_engine_name(mine)}",
                hint="resume with the same [distributed] settings, or pass --restart")
        if len(state.rng) != self.accelerator.num_processes:
            raise CheckpointError(f"the step checkpoint holds {len(state.rng)} RNG states, this run has "
                                  f"{self.accelerator.num_processes} processes",
                                  hint="resume with the same number of processes, or pass --restart")
        with torch.no_grad():
            for name, param in named.items():
                param.copy_(state.trainable[name].to(param.device, param.dtype))
        scheduler.load_state_dict(state.scheduler)
        stream.restore(*state.data)
        self.method.load_step_state(state.method)
        # DeepSpeed: the optimizer partitions and the RNG are restored once the engine exists
        self.backend.restore_before_prepare(optimizer, state.optimizer, state.rng[self.accelerator.process_index])
        result.steps, result.samples, result.losses = state.step, state.samples, list(state.losses)

    def _param_groups(self, params: list[torch.nn.Parameter]) -> list[dict[str, Any]]:
        """A separate learning rate for the projector when [train] projector_lr is set."""
        if self.cfg.projector_lr is None:
            return [{"params": params}]
        projector = {id(p) for n, p in self.model.named_parameters() if "multi_modal_projector" in n}
        groups = [{"params": [p for p in params if id(p) not in projector]},
                  {"params": [p for p in params if id(p) in projector], "lr": self.cfg.projector_lr}]
        return [g for g in groups if g["params"]]


def _engine_name(engine: dict[str, Any] | None) -> str:
    if engine is None:
        return "a single process or DDP (a plain AdamW state)"
    return (f"DeepSpeed ZeRO-{engine.get('zero_stage')} on {engine.get('processes')} processes "
            "(per-rank optimizer partitions)")


def _scheduler(cfg: Any, optimizer: torch.optim.Optimizer, steps: int):
    from transformers import get_scheduler

    name = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[cfg.lr_scheduler]
    warmup = int(round(cfg.warmup_ratio * steps))
    return get_scheduler(name, optimizer=optimizer, num_warmup_steps=warmup, num_training_steps=steps)
