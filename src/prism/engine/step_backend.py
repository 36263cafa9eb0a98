"""How one optimizer step runs: on accelerate's plain/DDP path, or inside a DeepSpeed engine.

The step loop (``prism.engine.fit``) is the same for both; what differs is confined to
this small interface: wrapping the model and optimizer, running a micro-batch's forward
and backward, and reading or writing the optimizer state of a step checkpoint. DDP keeps
a plain AdamW state on every rank; DeepSpeed (``prism.engine.zero``) owns per-rank
optimizer partitions.

Under DDP and DeepSpeed the wrapped module is a ``LossModule``: the method's forward plan, the
model and the method's loss all run inside the wrapper's forward. A method whose loss uses its
own modules outside the model's forward (modal_prompt's MLP mapping prompts into CLIP space)
would otherwise have those parameters found unused by DDP at the end of the forward and then
marked ready a second time by the backward ("Expected to mark a variable ready only once").
One process keeps the plain path (nothing is wrapped there).
"""

from __future__ import annotations

from typing import Any

import torch

from prism.engine.forward_plan import TRAIN_STEP, model_inputs, plan_forward
from prism.engine.seeding import restore_rng


class LossModule(torch.nn.Module):
    """The method's loss on a batch, as one module's forward (what DDP or DeepSpeed wraps)."""

    def __init__(self, model: Any, method: Any, task: Any):
        super().__init__()
        self.model = model
        self.method = method
        self.task = task

    def forward(self, batch: Any) -> torch.Tensor:
        plan = plan_forward(self.method, batch, TRAIN_STEP)
        outputs = self.model(**model_inputs(batch, plan))
        return self.method.loss(self.task, batch, outputs)


class StepBackend:
    """What the step loop asks of a backend (the DDP behaviour is the default)."""

    def __init__(self, accelerator: Any):
        self.accelerator = accelerator

    def prepare(self, model: Any, optimizer: Any, *, method: Any, task: Any, micro_batch: int,
                accumulation: int, max_grad_norm: float | None) -> tuple[Any, Any]:
        """The model and optimizer the step loop drives (wrapped for the processes)."""
        if self.distributed:
            return self.accelerator.prepare(LossModule(model, method, task), optimizer)
        return self.accelerator.prepare(model, optimizer)

    @property
    def distributed(self) -> bool:
        return self.accelerator.num_processes > 1

    def micro_step(self, model: Any, method: Any, task: Any, batch: Any, weight: float, *,
                   last: bool) -> torch.Tensor:
        """Forward and backward of one micro-batch; returns its weighted loss.

        ``last``: the step's final micro-batch (where gradients are synchronised and applied).
        """
        if self.distributed:
            loss = model(batch) * weight  # LossModule: plan, model and method.loss inside DDP's forward
        else:
            plan = plan_forward(method, batch, TRAIN_STEP)
            outputs = model(**model_inputs(batch, plan))
            loss = method.loss(task, batch, outputs) * weight
        self.accelerator.backward(loss)
        return loss

    def end_micro_steps(self) -> None:
        """After the step's micro-batches, before clipping and ``optimizer.step()``."""

    def engine_info(self) -> dict[str, Any] | None:
        """Identifies whose optimizer state a step checkpoint holds (None: a plain AdamW state)."""
        return None

    def trainable_state(self, named: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in named.items()}

    def optimizer_state(self, optimizer: Any) -> Any:
        return optimizer.state_dict()

    def restore_before_prepare(self, optimizer: Any, optimizer_state: Any, rng: Any) -> None:
        """A step checkpoint's optimizer state and this rank's RNG, into the unwrapped optimizer."""
        optimizer.load_state_dict(optimizer_state)
        restore_rng(*rng)

    def restore_after_prepare(self, named: dict[str, torch.nn.Parameter], trainable: dict[str, torch.Tensor],
                              optimizer: Any, optimizer_state: Any, rng: Any) -> None:
        """What can only be restored once the wrapped optimizer exists (nothing for DDP)."""

    def after_fit(self, model: torch.nn.Module) -> None:
        """The fit is over: release what the backend built for it."""


class DeepSpeedSteps(StepBackend):
    """Steps inside a DeepSpeed engine (``run``: ``prism.engine.zero.DeepSpeedRun``)."""

    def __init__(self, accelerator: Any, run: Any):
        super().__init__(accelerator)
        self.run = run

    def prepare(self, model: Any, optimizer: Any, *, method: Any, task: Any, micro_batch: int,
                accumulation: int, max_grad_norm: float | None) -> tuple[Any, Any]:
        if getattr(method, "edits_gradients", False):
            from prism.errors import ConfigError

            raise ConfigError(
                f"method {method.id!r} edits gradients between the backward pass and the optimizer step, "
                "which DeepSpeed performs inside its backward",
                hint='use [distributed] backend = "ddp" (or one process) for this method')
        self.run.configure(model, micro_batch=micro_batch, accumulation=accumulation, max_grad_norm=max_grad_norm)
        self.run.before_prepare()
        return self.accelerator.prepare(self.run.loss_module(model, method, task), optimizer)

    def micro_step(self, model: Any, method: Any, task: Any, batch: Any, weight: float, *,
                   last: bool) -> torch.Tensor:
        loss = model(batch) * weight  # the engine's forward runs before_forward, the model and method.loss
        # the engine steps after the step's last micro-batch; the token weights already divide by
        # the accumulation, so DeepSpeed must not again
        self.accelerator.sync_gradients = last
        self.accelerator.backward(loss, scale_wrt_gas=False)
        return loss

    def end_micro_steps(self) -> None:
        self.accelerator.sync_gradients = True

    def engine_info(self) -> dict[str, Any] | None:
        return self.run.engine_info()

    def trainable_state(self, named: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
        return self.run.full_trainable(named)

    def optimizer_state(self, optimizer: Any) -> Any:
        return self.run.optimizer_shards(optimizer)

    def restore_before_prepare(self, optimizer: Any, optimizer_state: Any, rng: Any) -> None:
        """Nothing yet: the optimizer partitions exist once the engine does."""

    def restore_after_prepare(self, named: dict[str, torch.nn.Parameter], trainable: dict[str, torch.Tensor],
                              optimizer: Any, optimizer_state: Any, rng: Any) -> None:
        self.run.restore(named, trainable, optimizer, optimizer_state)
        restore_rng(*rng)

    def after_fit(self, model: torch.nn.Module) -> None:
        self.run.after_fit(model)  # engine destroyed; ZeRO-3: parameters gathered until the next fit


def step_backend(accelerator: Any, deepspeed: Any = None) -> StepBackend:
    """The backend for a run: DeepSpeed when ``deepspeed`` (a DeepSpeedRun) is given, else DDP/plain."""
    return StepBackend(accelerator) if deepspeed is None else DeepSpeedSteps(accelerator, deepspeed)
