"""ewc: one LoRA plus a diagonal-Fisher penalty (Kirkpatrick et al., 2017).

After each task the adapter weights θ* and a diagonal empirical Fisher F are stored; later
tasks pay (λ/2)·Σ_k Σ_j F_kj (θ_j − θ*_kj)², so weights that mattered for an earlier task
stay near that task's optimum while unimportant ones remain free to move.

The Fisher is the *empirical* Fisher of the paper by default: the mean over N training samples
of each sample's squared loss gradient. LAMDA-CL PRISM instead squares the gradient of a whole
per-device batch (its "micro-batch 1" only chunks the computation; the squared quantity is the
batch's summed gradient), which underestimates F by roughly the batch size when per-sample
gradients disagree; ``fisher = "prism_batch"`` reproduces it.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from prism.methods.base import FitHandle, LoRAParams, TaskContext
from prism.methods.ft_lora import SLOT, FineTuneLoRA


class EWCParams(LoRAParams):
    """Published: λ = 5000 (PRISM), LoRA parameters only, attn+ffn (r 96 on UCIT); PRISM's Fisher
    squares the gradients of 50 per-device batches. prism's default is the paper's empirical
    Fisher: 50 per-sample squared gradients."""

    lambda_ewc: float = Field(
        5000.0, ge=0, description="λ: strength of the penalty (λ/2)·Σ F (θ − θ*)² (PRISM: 5000)"
    )
    fisher: Literal["per_sample", "prism_batch"] = Field(
        "per_sample",
        description="'per_sample' (Kirkpatrick et al.'s empirical Fisher): each sample's gradient is "
        "squared; 'prism_batch' (PRISM): the gradient of a whole batch of fisher_batch_size samples "
        "(default: the per-device training batch) is squared",
    )
    fisher_batches: int = Field(
        50, ge=1, description="squared gradients averaged into the Fisher: samples with fisher='per_sample', "
        "batches with 'prism_batch' (PRISM: 50 batches)"
    )
    fisher_batch_size: int | None = Field(
        None, ge=1, description="with fisher='prism_batch': samples per squared gradient (default: the "
        "per-device training batch size, as PRISM); ignored by 'per_sample', which always uses 1"
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
        """Mean of squared loss gradients over the task's first ``fisher_batches`` batches.

        Under several processes every rank walks the same seeded batch stream and takes every
        world-th batch; sums and counts are added across ranks, so N processes estimate exactly
        the Fisher of one process, in 1/N of the time. Gradients come from
        ``torch.autograd.grad``, so nothing is left in ``.grad`` to leak into the next task's
        optimizer; parameters the loss never reaches get F = 0.
        """
        names = list(live)
        tensors = [live[n] for n in names]
        sums = [torch.zeros_like(t, dtype=torch.float32) for t in tensors]
        rank, world = _rank_and_world()
        size = 1 if self.params.fisher == "per_sample" else self.params.fisher_batch_size
        count = 0
        for index, batch in enumerate(fit.batches(limit=self.params.fisher_batches, batch_size=size)):
            if index % world != rank:
                continue
            with torch.enable_grad():
                outputs = fit.forward(batch)
                grads = torch.autograd.grad(outputs.loss, tensors, allow_unused=True)
            for total, grad in zip(sums, grads):
                if grad is not None:
                    total.add_(grad.detach().float().pow(2))
            count += 1
        sums, count = _sum_across_ranks(sums, count)
        return {n: (s / max(count, 1)).cpu() for n, s in zip(names, sums)}

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


def _rank_and_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _sum_across_ranks(sums: list[torch.Tensor], count: int) -> tuple[list[torch.Tensor], int]:
    """Each rank squared the gradients of its share of the batches: add the shares up."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return sums, count
    for t in sums:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    total = torch.tensor([float(count)], device=sums[0].device if sums else "cpu")
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return sums, int(total.item())
