"""Routers: small modules that turn a layer's input into mixing weights over its slots.

A router lives in ``layer.routers[name]`` so its parameters are part of the model
(trainable, in ``state_dict``, moved by ``.to()``); ``AdapterSet.set_router`` builds
one per layer from a *factory* ``factory(layer) -> nn.Module``.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from prism.adapters.layers import LoRALinear, module_device

RouterFactory = Callable[[LoRALinear], nn.Module]


def seeded_linear_weight(rows: int, cols: int, generator: torch.Generator | None = None,
                         device: torch.device | str | None = None,
                         dtype: torch.dtype | None = None) -> nn.Parameter:
    """nn.Linear's default weight init (uniform ±1/√cols), drawn on the CPU from ``generator``, so
    every router (moelora's and clmoe's, SAME's, SMoLoRA's) is seeded the same way on any device."""
    bound = 1.0 / cols**0.5
    weight = torch.empty(rows, cols, dtype=torch.float32).uniform_(-bound, bound, generator=generator)
    return nn.Parameter(weight.to(device=device, dtype=dtype or torch.float32))


class TokenRouter(nn.Linear):
    """Softmax gate over slots from a linear map of each token (MoELoRA's router).

    Bias-free by default, as in CoIN. ``top_k`` keeps the k largest gates per token
    and renormalises them (SMoLoRA top-1, SAME top-2); gradients flow through the kept gates.
    """

    def __init__(
        self,
        in_features: int,
        num_slots: int,
        *,
        top_k: int | None = None,
        bias: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(in_features, num_slots, bias=bias, device="meta")
        if top_k is not None and not 1 <= top_k <= num_slots:
            raise ValueError(f"top_k must be in [1, {num_slots}], got {top_k}")
        self.top_k = top_k
        self.weight = seeded_linear_weight(num_slots, in_features, generator, device, dtype)
        if bias:
            bound = 1.0 / in_features**0.5
            values = torch.empty(num_slots).uniform_(-bound, bound, generator=generator)
            self.bias = nn.Parameter(values.to(device=device, dtype=dtype or torch.float32))

    def forward(self, x: Tensor) -> Tensor:
        gates = torch.softmax(super().forward(x).float(), dim=-1)
        if self.top_k is not None and self.top_k < gates.shape[-1]:
            kept, index = gates.topk(self.top_k, dim=-1)
            gates = torch.zeros_like(gates).scatter(-1, index, kept / kept.sum(-1, keepdim=True))
        return gates.to(self.weight.dtype)

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", top_k={self.top_k}" if self.top_k else "")


def token_router(num_slots: int, *, top_k: int | None = None, seed: int | None = None) -> RouterFactory:
    """A factory of :class:`TokenRouter` for ``AdapterSet.set_router`` (one generator for all layers)."""
    generator = torch.Generator().manual_seed(seed) if seed is not None else None

    def build(layer: LoRALinear) -> nn.Module:
        return TokenRouter(layer.in_features, num_slots, top_k=top_k, generator=generator,
                           device=module_device(layer.lora_A if len(layer.lora_A) else layer.base_layer))

    return build
