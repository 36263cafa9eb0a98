"""olora: orthogonal subspace LoRA (Wang et al., EMNLP Findings 2023).

Each task trains a fresh LoRA slot while earlier slots stay frozen but active, and the new
slot's A is pushed orthogonal to every earlier A, so the new update lives in a subspace the
old tasks do not use. At inference every slot is summed.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from prism.methods.base import FixedMix, LoRAParams, Method, TaskContext


def slot_name(index: int) -> str:
    return f"task{index}"


class OLoRAParams(LoRAParams):
    """Original: λ1 = 0.5, λ2 = 0, constant lr 1e-3. PRISM: λ1 = 0.5, rank r split into one
    slot per task (UCIT r=96 → 16 per task), attn+ffn. MCITlib: λ1 = 0.05."""

    lambda_orth: float = Field(
        0.5, ge=0, description="λ1 on Σ_{i<t} ‖A_t A_iᵀ‖₁, the overlap with earlier slots (original/PRISM: 0.5; MCITlib: 0.05)"
    )
    lambda_l2: float = Field(
        0.0, ge=0, description="λ2 on ‖A_t‖² + ‖B_t‖², the new slot's squared norm (original: 0)"
    )
    r_per_task: int | None = Field(
        None, ge=1,
        description="rank of each task's slot; None: r // number of tasks, at least 1 (PRISM's split). "
        "alpha applies per slot, so each slot's update is scaled by alpha/r_per_task",
    )


class OLoRA(Method):
    id = "olora"
    summary = "a new LoRA slot per task, orthogonal to earlier slots; all slots summed at inference"
    Params = OLoRAParams

    def __init__(self, params: OLoRAParams, run: Any):
        super().__init__(params, run)
        self.current: str | None = None

    @property
    def slot_rank(self) -> int:
        if self.params.r_per_task is not None:
            return int(self.params.r_per_task)
        return max(1, self.params.r // max(1, self.run.num_tasks))

    # -- set-up ----------------------------------------------------------------------------
    def attach(self, backbone) -> None:
        from prism.adapters import inject_adapters

        super().attach(backbone)
        self.adapters = inject_adapters(backbone.model, backbone.target_regex(self.params.target_modules))

    def begin_task(self, task: TaskContext) -> None:
        """Add this task's slot, train only it; earlier slots stay in the (summed) forward."""
        assert self.adapters is not None
        name = slot_name(task.index)
        self.adapters.add_slot(name, r=self.slot_rank, alpha=self.params.alpha, dropout=self.params.dropout,
                               seed=self.run.seed + task.index, exist_ok=True)
        self.adapters.set_trainable([name])
        self.adapters.activate(None)
        self.current = name

    # -- training ----------------------------------------------------------------------------
    def earlier_slots(self) -> list[str]:
        assert self.adapters is not None
        return [s for s in self.adapters.slots if s != self.current]

    def orthogonality(self) -> torch.Tensor:
        """Σ_{i<t} Σ_layers ‖A_t A_iᵀ‖₁ for the slot being trained (0 on the first task)."""
        assert self.adapters is not None and self.current is not None
        total: torch.Tensor | None = None
        earlier = self.earlier_slots()
        for layer in self.adapters.layers.values():
            if self.current not in layer.lora_A:
                continue
            a_t = layer.lora_A[self.current].weight
            for old in earlier:
                if old in layer.lora_A:
                    a_i = layer.lora_A[old].weight.to(a_t.dtype)
                    term = (a_t @ a_i.T).abs().sum()
                    total = term if total is None else total + term
        return total if total is not None else torch.zeros(())

    def l2(self) -> torch.Tensor:
        """‖A_t‖² + ‖B_t‖² summed over layers."""
        assert self.adapters is not None and self.current is not None
        params = self.adapters.parameters([self.current])
        return sum((p.pow(2).sum() for p in params), torch.zeros((), device=params[0].device))

    def loss(self, task: TaskContext, batch, outputs) -> torch.Tensor:
        loss = outputs.loss
        if self.params.lambda_orth > 0 and self.earlier_slots():
            loss = loss + self.params.lambda_orth * self.orthogonality().to(loss.device, loss.dtype)
        if self.params.lambda_l2 > 0:
            loss = loss + self.params.lambda_l2 * self.l2().to(loss.device, loss.dtype)
        return loss

    def end_task(self, task: TaskContext, fit) -> None:
        assert self.adapters is not None
        self.adapters.set_trainable([])  # every slot learned so far is now frozen

    # -- inference ---------------------------------------------------------------------------
    def prepare_inference(self, learned: TaskContext) -> None:
        assert self.adapters is not None
        self.adapters.activate(None)  # all slots, summed with weight 1

    def inference_mix(self) -> FixedMix:
        """Every task's slot, summed with weight 1 (what ``prepare_inference`` activates)."""
        assert self.adapters is not None
        return {name: 1.0 for name in self.adapters.slots}

    # -- state ---------------------------------------------------------------------------------
    def state_metadata(self) -> dict[str, Any]:
        assert self.adapters is not None
        slots = {}
        for name in self.adapters.slots:
            spec = self.adapters.spec(name)
            slots[name] = {"r": spec.r, "alpha": spec.alpha, "dropout": spec.dropout}
        return {"slots": slots}

    def load_state(self, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
        """Re-create the slots (ranks/alpha as trained) so the adapter weights load into them."""
        assert self.adapters is not None
        for name, spec in metadata.get("slots", {}).items():
            self.adapters.add_slot(name, r=int(spec["r"]), alpha=float(spec["alpha"]),
                                   dropout=float(spec["dropout"]), exist_ok=True)
        self.adapters.set_trainable([])
        self.adapters.activate(None)
