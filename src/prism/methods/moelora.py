"""moelora: a mixture of LoRA experts per layer, routed per token (CoIN, Chen et al., 2024).

Each target linear holds E experts, LoRA slots of rank r / E, and a bias-free linear router on
the layer's input (read before the LoRA dropout) that gives per-token softmax gates:

    ΔW x = (α / r) · Σ_i g_i(x) · B_i A_i x

scaled by the total rank's α / r (not α / (r / E)), A drawn from N(0, 0.01), B zero, no
balancing loss. Every expert and every router trains on every task: nothing is task-specific,
so forgetting is fought only by the experts' division of labour.

LAMDA-CL PRISM's port multiplies the gate into both factors, ``(Σ_i g_i B_i)(Σ_j g_j A_j) x``,
which adds g_i g_j B_i A_j cross terms (``gating = "prism"``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field
from torch import Tensor

from prism.methods.base import LoRAParams
from prism.methods.experts import ROUTER, ExpertMixture, expert_name  # noqa: F401 (re-exported for tests)


class MoELoRAParams(LoRAParams):
    """CoIN's released scripts (scripts/CoIN/Train_MOE): r 128, α 256, 2 experts, every linear layer
    of the language model, A ~ N(0, 0.01). MCITlib: r 18, E 6. LAMDA-CL PRISM: E = number of tasks,
    r/α 96/192 on UCIT, the gate in both A and B."""

    r: int = Field(128, ge=1, description="total LoRA rank, split into num_experts experts of r // num_experts "
                   "(CoIN: 128; MCITlib: 18; PRISM UCIT: 96)")
    alpha: float = Field(256.0, gt=0, description="LoRA alpha; every expert is scaled by alpha/r, the total "
                         "rank (CoIN: 256)")
    num_experts: int | None = Field(2, ge=1, description="experts per layer (CoIN: 2; MCITlib: 6); leave unset "
                                    "(null) for one per task, as PRISM")
    init_a: float = Field(0.01, gt=0, description="std of the normal each expert's A is drawn from (CoIN: 0.01)")
    gating: Literal["coin", "prism"] = Field(
        "coin", description="'coin' (the paper and CoIN's code): Σ g_i B_i A_i x; 'prism' (LAMDA-CL PRISM's "
        "port): (Σ g_i B_i)(Σ g_j A_j) x, cross terms included")


class MoELoRA(ExpertMixture):
    id = "moelora"
    summary = "E LoRA experts per layer mixed per token by a softmax router; all train on every task"
    Params = MoELoRAParams

    def expert_count(self) -> int:
        return int(self.params.num_experts or self.run.num_tasks)

    def make_router(self, layer, generator):
        from prism.adapters.layers import module_device
        from prism.adapters.routing import TokenRouter

        return TokenRouter(layer.in_features, len(self.experts), generator=generator,
                           device=module_device(layer.base_layer))

    def attach(self, backbone) -> None:
        super().attach(backbone)
        if self.params.gating == "prism":
            self.adapters.set_delta_fn(gate_in_both_factors)

    def state_metadata(self) -> dict[str, Any]:
        return {"experts": self.experts, "expert_rank": self.expert_rank, "gating": self.params.gating}

    def load_state(self, tensors: dict[str, Tensor], metadata: dict[str, Any]) -> None:
        from prism.errors import CheckpointError

        saved = metadata.get("experts")
        if saved is not None and (list(saved) != self.experts or metadata.get("expert_rank") != self.expert_rank):
            raise CheckpointError(f"the checkpoint holds experts {saved} of rank {metadata.get('expert_rank')}, "
                                  f"these settings make {self.experts} of rank {self.expert_rank}",
                                  hint="set [method.moelora] r and num_experts as in the run that saved it")


def gate_in_both_factors(layer, x: Tensor) -> Tensor | None:
    """PRISM's port: ``scaling · (Σ_i g_i B_i)(Σ_j g_j A_j x)`` with per-token gates g."""
    active = [name for name in layer.active_slots() if name in layer.lora_A]
    if not active:
        return None
    gates = layer.router_weights(x)
    first = active[0]
    x_in = layer.lora_dropout[first](x.to(layer.lora_A[first].weight.dtype))
    mixed_a = sum(_gate(gates, column, x_in) * layer.lora_A[name](x_in) for column, name in enumerate(active))
    return sum(_gate(gates, column, x_in) * layer.lora_B[name](mixed_a) for column, name in enumerate(active)) \
        * layer.scaling[first]


def _gate(gates: Tensor, column: int, like: Tensor) -> Tensor:
    return gates[..., column:column + 1].to(like.dtype)
