"""ewc: one LoRA plus a diagonal-Fisher penalty (Kirkpatrick et al., 2017).

After each task the adapter weights θ* and a diagonal empirical Fisher F are stored; later
tasks pay (λ/2)·Σ_k Σ_j F_kj (θ_j − θ*_kj)², so weights that mattered for an earlier task
stay near that task's optimum while unimportant ones remain free to move.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from prism.methods.base import FitHandle, LoRAParams, TaskContext
from prism.methods.ft_lora import SLOT, FineTuneLoRA


class EWCParams(LoRAParams):
    """PRISM: λ = 5000, Fisher from 50 batches of micro-batch 1, LoRA on attn+ffn (r 96 on UCIT)."""

    lambda_ewc: float = Field(
        5000.0, ge=0, description="λ: strength of the penalty (λ/2)·Σ F (θ − θ*)² (PRISM: 5000)"
    )
    fisher_batches: int = Field(
        50, ge=1, description="training batches of the finished task averaged into the Fisher (PRISM: 50)"
    )
    fisher_batch_size: int = Field(
        1, ge=1, description="samples per Fisher batch; 1 gives per-sample squared gradients (PRISM: 1)"
    )


class EWC(FineTuneLoRA):
    """ft_lora's single adapter (a stock peft LoRA on disk) plus the Fisher penalty."""

    id = "ewc"
    summary = "one LoRA + diagonal-Fisher penalty pulling weights toward earlier tasks' optima"
    Params = EWCParams

    def __init__(self, params: EWCParams, run: Any):
        super().__init__(params, run)
        #: per finished task (in order): θ* and F, keyed by adapter parameter name
        self.anchors: list[dict[str, torch.Tensor]] = []
        self.fishers: list[dict[str, torch.Tensor]] = []

    def _params(self) -> dict[str, torch.nn.Parameter]:
        assert self.adapters is not None
        return self.adapters.named_parameters([SLOT])

    # -- training ----------------------------------------------------------------------------
    def penalty(self) -> torch.Tensor:
        """(λ/2)·Σ_k Σ_j F_kj (θ_j − θ*_kj)² over the stored tasks (0 before any)."""
        live = self._params()
        total = torch.zeros((), device=next(iter(live.values())).device)
        for anchor, fisher in zip(self.anchors, self.fishers):
            for name, param in live.items():
                if name not in fisher:
                    continue
                f = fisher[name].to(param.device, param.dtype)
                star = anchor[name].to(param.device, param.dtype)
                total = total + (f * (param - star).pow(2)).sum()
        return 0.5 * float(self.params.lambda_ewc) * total

    def loss(self, task: TaskContext, batch, outputs) -> torch.Tensor:
        if not self.fishers or self.params.lambda_ewc == 0:
            return outputs.loss
        return outputs.loss + self.penalty().to(outputs.loss.dtype)

    def end_task(self, task: TaskContext, fit: FitHandle) -> None:
        live = {n: p for n, p in self._params().items() if p.requires_grad}
        self.anchors.append({n: p.detach().clone().cpu() for n, p in live.items()})
        self.fishers.append(self.estimate_fisher(fit, live))

    def estimate_fisher(self, fit: FitHandle, live: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
        """Mean over batches of the squared gradient of the task loss (diagonal empirical Fisher).

        Gradients come from ``torch.autograd.grad``, so nothing is left in ``.grad`` to leak
        into the next task's optimizer; parameters the loss never reaches get F = 0.
        """
        names = list(live)
        tensors = [live[n] for n in names]
        sums = [torch.zeros_like(t, dtype=torch.float32) for t in tensors]
        count = 0
        for batch in fit.batches(limit=self.params.fisher_batches, batch_size=self.params.fisher_batch_size):
            with torch.enable_grad():
                outputs = fit.forward(batch)
                grads = torch.autograd.grad(outputs.loss, tensors, allow_unused=True)
            for total, grad in zip(sums, grads):
                if grad is not None:
                    total.add_(grad.detach().float().pow(2))
            count += 1
        fisher = [s / max(count, 1) for s in sums]
        fisher = _average_across_ranks(fisher)
        return {n: f.cpu() for n, f in zip(names, fisher)}

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for k, (anchor, fisher) in enumerate(zip(self.anchors, self.fishers)):
            out.update({f"task{k}.theta.{n}": t for n, t in anchor.items()})
            out.update({f"task{k}.fisher.{n}": t for n, t in fisher.items()})
        return out

    def state_metadata(self) -> dict[str, Any]:
        return {"tasks": len(self.fishers)}

    def load_state(self, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
        count = int(metadata.get("tasks", 0))
        self.anchors = [{} for _ in range(count)]
        self.fishers = [{} for _ in range(count)]
        for key, tensor in tensors.items():
            task, kind, name = key.split(".", 2)
            k = int(task.removeprefix("task"))
            (self.anchors if kind == "theta" else self.fishers)[k][name] = tensor.clone()


def _average_across_ranks(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Under DDP every rank saw different batches: average their Fisher estimates."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return tensors
    world = dist.get_world_size()
    for t in tensors:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t.div_(world)
    return tensors
