"""What a router may know besides its layer's input: the router context of one forward call.

A router module that sets ``takes_context = True`` is called as ``router(x, context)``.
The context holds the live attention mask (it grows during generation), the plan's
named per-sample tensors (already repeated for beams), whether this forward is the
prefill (the whole prompt) or a decode step (one new token), and a cache for values
a router computes at prefill and reuses while decoding (a mask-aware mean of the
prompt, gates to add to later ones). One context is opened per training step or per
``generate`` call (``open_router_context``); hooks on the model keep it current.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

_CONTEXT_ATTR = "_prism_router_context"


@dataclass
class RouterContext:
    attention_mask: Tensor | None = None
    sample: dict[str, Tensor] = field(default_factory=dict)
    #: forwards of the model since the context was opened (0 during the prefill)
    calls: int = 0
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def prefill(self) -> bool:
        return self.calls == 0


def masked_mean(x: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of ``x`` ``[batch, seq, dim]`` over the positions ``mask`` ``[batch, seq]`` keeps (all without one).

    The mask's last ``seq`` columns are used, so a mask longer than ``x`` (a decode step
    under a KV cache) still lines up with the positions ``x`` holds.
    """
    if mask is None:
        return x.mean(dim=1)
    weights = mask[:, -x.shape[1]:].to(x.dtype).unsqueeze(-1)
    return (x * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def open_router_context(model: nn.Module, sample: dict[str, Tensor] | None = None,
                        attention_mask: Tensor | None = None) -> RouterContext:
    """A fresh context for the next forward call(s) of ``model``, seen by every adapted layer.

    ``attention_mask``: the prompt's (repeated for beams). ``generate`` does not pass the mask
    to the model's forward; each decode step adds one attended position to it here.
    """
    from prism.adapters.layers import LoRALinear

    context = RouterContext(attention_mask=attention_mask, sample=dict(sample or {}))
    layers = getattr(model, "_prism_router_layers", None)
    if layers is None:  # once per model: hooks, and the adapted layers (not a walk of every module per batch)
        model.register_forward_pre_hook(_before_forward, with_kwargs=True)
        model.register_forward_hook(_after_forward)
        layers = [module for module in model.modules() if isinstance(module, LoRALinear)]
        model._prism_router_layers = layers
    setattr(model, _CONTEXT_ATTR, context)
    for layer in layers:
        layer.context = context
    return context


def _before_forward(model: nn.Module, args: tuple, kwargs: dict) -> None:
    context = getattr(model, _CONTEXT_ATTR, None)
    if context is None:
        return
    mask = kwargs.get("attention_mask")
    if isinstance(mask, torch.Tensor):
        context.attention_mask = mask
    elif context.calls > 0 and context.attention_mask is not None:  # a decode step: one new token
        grown = context.attention_mask
        context.attention_mask = torch.cat([grown, grown.new_ones(grown.shape[0], 1)], dim=1)


def _after_forward(model: nn.Module, args: tuple, output: Any) -> None:
    context = getattr(model, _CONTEXT_ATTR, None)
    if context is not None:
        context.calls += 1
