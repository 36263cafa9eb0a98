"""The shared frame of the LoRA mixture-of-experts methods (moelora, clmoe, same).

Each target linear holds the method's experts (``slot_ops.add_experts``: rank r / E, scaled by
α / r) and one router per layer, built by the subclass's ``make_router``; every expert and
router trains on every task. Subclasses add what makes them continual.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from prism.methods.base import Method, TaskContext

ROUTER = "router"


def expert_name(index: int) -> str:
    return f"expert{index}"


class ExpertMixture(Method):
    """Experts and a router in every adapted layer; subclasses choose the count and the router."""

    def expert_count(self) -> int:
        return int(self.params.num_experts or self.run.num_tasks)

    @property
    def experts(self) -> list[str]:
        return [expert_name(i) for i in range(max(1, self.expert_count()))]

    @property
    def expert_rank(self) -> int:
        return max(1, int(self.params.r) // len(self.experts))

    def make_router(self, layer: Any, generator: torch.Generator) -> nn.Module:
        """The router of one adapted layer (its weights drawn from ``generator``)."""
        raise NotImplementedError

    def attach(self, backbone) -> None:
        from prism.adapters import inject_adapters
        from prism.adapters.slot_ops import add_experts

        super().attach(backbone)
        params = self.params
        self.adapters = inject_adapters(backbone.model, backbone.target_regex(params.target_modules))
        add_experts(self.adapters, self.experts, total_rank=params.r, alpha=params.alpha, dropout=params.dropout,
                    init=params.init_a, seed=self.run.seed)
        generator = torch.Generator().manual_seed(self.run.seed + 1)  # one stream for every layer's router
        self.adapters.set_router(lambda layer: self.make_router(layer, generator), name=ROUTER)
        self.adapters.set_trainable(self.experts, routers=True)

    def routers(self) -> list[nn.Module]:
        assert self.adapters is not None
        return [layer.routers[ROUTER] for layer in self.adapters.layers.values()]

    def begin_task(self, task: TaskContext) -> None:
        assert self.adapters is not None
        self.adapters.set_trainable(self.experts, routers=True)  # every expert and router, every task

    def end_task(self, task: TaskContext, fit: Any) -> None:
        assert self.adapters is not None
        self.adapters.set_trainable([], routers=False)
