"""SMoLoRA's separable mixture inside one adapted linear: two expert groups, two top-1 routers, a fusion.

A layer holds visual-understanding experts and instruction-following experts (LoRA slots of equal
rank and scaling) and three modules in ``layer.routers``:

- ``visual``: a bias-free linear router on the mask-aware mean of the layer's input over the
  sample's prompt (positions the plan's pooling mask keeps, else the attention mask), chosen top-1
  per sample. Outside training the choice is made once, at the prefill, and reused unchanged at
  every decode step of that ``generate`` call (under a KV cache a decode step sees one new token);
- ``instruction``: a bias-free linear router on the sample's instruction embedding (the plan's
  per-sample tensor ``INSTRUCTION``), top-1 per sample;
- ``fusion``: two scalar scores ``Linear(out_features, 1)``, one on each branch's output; a
  softmax over the two gives per-token weights that sum to one.

The layer adds ``w_v · scaling · B_v A_v x + w_i · scaling · B_i A_i x`` for the chosen experts
(``separable_delta``). How a top-1 gate carries gradient to its router is ``GateMode``.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn

from prism.adapters.layers import LoRALinear
from prism.adapters.router_context import RouterContext, masked_mean
from prism.adapters.routing import seeded_linear_weight

VISUAL, INSTRUCTION_ROUTER, FUSION = "visual", "instruction", "fusion"
#: the plan's per-sample tensors: the instruction embedding ``[B, d]`` and the pooling mask ``[B, S]``
INSTRUCTION = "smolora_instruction"
POOL_MASK = "smolora_pool_mask"

#: "straight_through": the forward is the one-hot choice, the backward that of the softmax (the router
#: learns); "gate_value": the chosen expert is scaled by its softmax probability (Switch-style);
#: "frozen": a constant one-hot (the release: no router gradient)
GateMode = Literal["straight_through", "gate_value", "frozen"]
GATE_MODES: tuple[str, ...] = ("straight_through", "gate_value", "frozen")


def top1_gate(logits: Tensor, mode: str) -> Tensor:
    """``[..., n]`` gates, one expert per row; the forward value is 1 on it (``gate_value``: its probability)."""
    if mode not in GATE_MODES:
        raise ValueError(f"unknown gate mode {mode!r}; use one of {GATE_MODES}")
    probs = torch.softmax(logits.float(), dim=-1)
    one_hot = nn.functional.one_hot(probs.argmax(-1), probs.shape[-1]).to(probs.dtype)
    if mode == "frozen":
        return one_hot
    if mode == "gate_value":
        return one_hot * probs
    return one_hot + (probs - probs.detach())  # exactly one-hot forward, softmax gradient


class VisualRouter(nn.Module):
    """Top-1 over the visual experts from the prompt's mean hidden state; fixed at prefill outside training."""

    def __init__(self, in_features: int, experts: int, *, mode: str = "straight_through",
                 generator: torch.Generator | None = None, device: Any = None):
        super().__init__()
        self.weight = seeded_linear_weight(experts, in_features, generator, device)
        self.mode = mode
        #: per row of the last prefill outside training: the chosen expert (what predictions record)
        self.chosen: Tensor | None = None

    def pooled(self, x: Tensor, context: RouterContext) -> Tensor:
        """``[B, in]``: the mean of ``x`` over the prompt positions (padding and training targets left out)."""
        mask = context.sample.get(POOL_MASK, context.attention_mask)
        return masked_mean(x.to(self.weight.dtype), None if mask is None else mask.to(x.device))

    def forward(self, x: Tensor, context: RouterContext) -> Tensor:
        if self.training:
            return top1_gate(nn.functional.linear(self.pooled(x, context), self.weight), self.mode)
        key = f"smolora_visual_{id(self)}"
        if key not in context.cache:  # the prefill: choose once for the whole generation
            gates = top1_gate(nn.functional.linear(self.pooled(x, context), self.weight), self.mode)
            context.cache[key] = gates
            self.chosen = gates.argmax(-1).detach().cpu()
        return context.cache[key]


class InstructionRouter(nn.Module):
    """Top-1 over the instruction experts from each sample's instruction embedding."""

    def __init__(self, embedding_dim: int, experts: int, *, mode: str = "straight_through",
                 generator: torch.Generator | None = None, device: Any = None):
        super().__init__()
        self.weight = seeded_linear_weight(experts, embedding_dim, generator, device)
        self.mode = mode

    def logits(self, embeddings: Tensor) -> Tensor:
        return nn.functional.linear(embeddings.to(self.weight.device, self.weight.dtype), self.weight)

    def forward(self, context: RouterContext, rows: int) -> Tensor:
        embeddings = context.sample.get(INSTRUCTION)
        if embeddings is None:
            raise ValueError("smolora's instruction router needs each sample's instruction embedding "
                             f"(ForwardPlan.sample[{INSTRUCTION!r}]); the method's prepare_forward supplies it")
        if embeddings.shape[0] != rows:
            raise ValueError(f"instruction embeddings for {embeddings.shape[0]} rows, the forward has {rows}")
        return top1_gate(self.logits(embeddings), self.mode)


class BranchFusion(nn.Module):
    """Per-token weights of the two branches: softmax over ``[s_v(visual out), s_i(instruction out)]``."""

    def __init__(self, out_features: int, *, generator: torch.Generator | None = None, device: Any = None):
        super().__init__()
        self.visual_score = seeded_linear_weight(1, out_features, generator, device)
        self.instruction_score = seeded_linear_weight(1, out_features, generator, device)

    def forward(self, visual: Tensor, instruction: Tensor) -> Tensor:
        """``[..., 2]`` (visual, instruction) weights, summing to one per token."""
        scores = torch.cat([nn.functional.linear(visual.to(self.visual_score.dtype), self.visual_score),
                            nn.functional.linear(instruction.to(self.instruction_score.dtype), self.instruction_score)],
                           dim=-1)
        return torch.softmax(scores.float(), dim=-1)


def separable_delta(visual_slots: list[str], instruction_slots: list[str]):
    """The layer update: each branch's chosen expert, fused per token (a ``LoRALinear`` delta function)."""
    visual_slots, instruction_slots = list(visual_slots), list(instruction_slots)

    def delta(layer: LoRALinear, x: Tensor) -> Tensor:
        context = layer.context if layer.context is not None else RouterContext()
        routers = layer.routers
        visual_gate = routers[VISUAL](x, context)
        instruction_gate = routers[INSTRUCTION_ROUTER](context, x.shape[0])
        visual = layer._gated_experts(visual_slots, x, visual_gate)  # scaling · B (g ⊙ A x): the chosen expert
        instruction = layer._gated_experts(instruction_slots, x, instruction_gate)
        weights = routers[FUSION](visual, instruction).to(visual.dtype)
        return weights[..., :1] * visual + weights[..., 1:] * instruction

    return delta
