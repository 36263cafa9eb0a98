"""olora: orthogonal subspace LoRA (Wang et al., EMNLP Findings 2023).

Each task trains a fresh LoRA slot while earlier slots stay frozen but active, and the new
slot's A is pushed orthogonal to every earlier A, so the new update lives in a subspace the
old tasks do not use. At inference every slot is summed.

Loss (paper, eq. 4): CE + λ1·Σ_{i<t} Σ_layers ‖A_t A_iᵀ‖₁ + λ2·Σ_{p ∈ {A_t, B_t}} ‖p‖₂ (the
unsquared Frobenius norm of each new-slot matrix, as the original's ``torch.norm(p, p=2)``).

Defaults are the original release's (O-LoRA ``src/run_uie_lora.py``): rank 8 *per task*,
α 32, dropout 0.1, λ1 0.5, λ2 0, constant lr 1e-3 (set through ``config_defaults``: a
prism.toml ``[train]`` table still wins). ``rank_split = "prism"`` selects LAMDA-CL PRISM's
protocol instead: ``r`` is the total rank, split into one slot of r // T per task, each slot
scaled by α / r_total (not α / r_slot).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from prism.methods.base import FixedMix, LoRAParams, Method, TaskContext


def slot_name(index: int) -> str:
    return f"task{index}"


class OLoRAParams(LoRAParams):
    """Original (O-LoRA release): r 8 per task, α 32, dropout 0.1, λ1 = 0.5, λ2 = 0, constant
    lr 1e-3. PRISM: λ1 = 0.5, rank r split into one slot per task (UCIT r=96 → 16 per task),
    each slot scaled by α/r_total, attn+ffn, lr 2e-4 cosine. MCITlib: λ1 = 0.05."""

    r: int = Field(8, ge=1, description="rank of each task's slot (original: 8); with rank_split='prism' "
                   "the total rank, split over the tasks")
    alpha: float = Field(32.0, gt=0, description="LoRA alpha (original: 32); each slot is scaled by "
                         "alpha/r, or alpha/r_total with rank_split='prism'")
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout on the LoRA input (original: 0.1)")
    rank_split: Literal["per_task", "prism"] = Field(
        "per_task",
        description="'per_task' (original): every task gets a slot of rank r, scaled by alpha/r; "
        "'prism' (LAMDA-CL PRISM): r is the total rank, each task gets r // number of tasks "
        "(at least 1), scaled by alpha/r",
    )
    lambda_orth: float = Field(
        0.5, ge=0, description="λ1 on Σ_{i<t} ‖A_t A_iᵀ‖₁, the overlap with earlier slots (original/PRISM: 0.5; MCITlib: 0.05)"
    )
    lambda_l2: float = Field(
        0.0, ge=0, description="λ2 on ‖A_t‖₂ + ‖B_t‖₂ summed over layers, the new slot's unsquared "
        "Frobenius norms (original: 0)"
    )


class OLoRA(Method):
    id = "olora"
    summary = "a new LoRA slot per task, orthogonal to earlier slots; all slots summed at inference"
    Params = OLoRAParams
    #: the original trains at a constant lr of 1e-3 (prism.toml's [train] values take precedence)
    config_defaults = {"train": {"lr": 1e-3, "lr_scheduler": "constant", "warmup_ratio": 0.0}}

    def __init__(self, params: OLoRAParams, run: Any):
        super().__init__(params, run)
        self.current: str | None = None

    @property
    def slot_rank(self) -> int:
        if self.params.rank_split == "prism":
            return max(1, self.params.r // max(1, self.run.num_tasks))
        return int(self.params.r)

    @property
    def slot_alpha(self) -> float:
        """The slot's alpha: its update is scaled by alpha/r_slot, or α/r_total under PRISM's split."""
        if self.params.rank_split == "prism":
            return float(self.params.alpha) * self.slot_rank / float(self.params.r)
        return float(self.params.alpha)

    # -- set-up ----------------------------------------------------------------------------
    def attach(self, backbone) -> None:
        from prism.adapters import inject_adapters

        super().attach(backbone)
        self.adapters = inject_adapters(backbone.model, backbone.target_regex(self.params.target_modules))

    def begin_task(self, task: TaskContext) -> None:
        """Add this task's slot, train only it; earlier slots stay in the (summed) forward."""
        assert self.adapters is not None
        name = slot_name(task.index)
        self.adapters.add_slot(name, r=self.slot_rank, alpha=self.slot_alpha, dropout=self.params.dropout,
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
        """Σ_layers (‖A_t‖₂ + ‖B_t‖₂): unsquared Frobenius norms, as in the original."""
        assert self.adapters is not None and self.current is not None
        params = self.adapters.parameters([self.current])
        return sum((torch.linalg.vector_norm(p) for p in params), torch.zeros((), device=params[0].device))

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
