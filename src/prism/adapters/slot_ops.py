"""Operations over the slots of an AdapterSet that several methods share (contract v2).

- ``depth_layers``: the adapted layers of one decoder depth (HiDe-LLaVA's top layer is the
  model's last language-model layer, whatever the model's depth — never a fixed index).
- ``weight_space_fusion``: a layer update ``(Σ B_i)(Σ A_i) x`` over several slots, cross terms
  included (HiDe-LLaVA's released fusion of the lower layers), beside the plain ``Σ B_i A_i x``
  that ``AdapterSet.activate`` gives.
- ``snapshot`` / ``interpolate``: slot weights saved at one moment and blended back later
  (CL-MoE's momentum update ``θ ← β θ_old + (1 − β) θ``).
"""

from __future__ import annotations

import re
from typing import Iterable

import torch
from torch import Tensor

from prism.adapters.adapter_set import AdapterSet
from prism.adapters.layers import DeltaFn, LoRALinear

#: a language-model decoder layer's index in a module path
_DEPTH = re.compile(r"(?:^|\.)language_model\.(?:model\.)?layers\.(\d+)\.")


def layer_depth(path: str) -> int | None:
    """The decoder-layer index of an adapted module of the language model (None elsewhere)."""
    match = _DEPTH.search(path)
    return None if match is None else int(match.group(1))


def depth_layers(adapters: AdapterSet, depth: int) -> list[str]:
    """Paths of the adapted layers at decoder ``depth`` (negative counts from the top: -1 is the last)."""
    depths = {path: layer_depth(path) for path in adapters.layers}
    present = sorted({d for d in depths.values() if d is not None})
    if not present:
        raise ValueError("no adapted layer belongs to a language-model decoder layer")
    count = present[-1] + 1
    wanted = depth + count if depth < 0 else depth
    if not 0 <= wanted < count:
        raise ValueError(f"depth {depth} is outside the model's {count} decoder layers")
    chosen = [path for path, d in depths.items() if d == wanted]
    if not chosen:
        raise ValueError(f"decoder layer {wanted} has no adapted module")
    return chosen


def other_layers(adapters: AdapterSet, paths: Iterable[str]) -> list[str]:
    """Every adapted layer not in ``paths``."""
    excluded = set(paths)
    return [path for path in adapters.layers if path not in excluded]


def weight_space_fusion(slots: Iterable[str]) -> DeltaFn:
    """A delta function: ``scaling · (Σ B_i)(Σ A_i) x`` over the ``slots`` a layer holds.

    The slots must share one scaling (equal rank and alpha), as summing factors of
    differently scaled updates has no single meaning.
    """
    names = tuple(slots)

    def delta(layer: LoRALinear, x: Tensor) -> Tensor | None:
        held = [name for name in names if name in layer.lora_A]
        if not held:
            return None
        scalings = {layer.scaling[name] for name in held}
        if len(scalings) != 1:
            raise ValueError(f"{layer.path}: weight-space fusion needs slots of one scaling, got "
                             f"{ {name: layer.scaling[name] for name in held} }")
        a = sum(layer.lora_A[name].weight for name in held)
        b = sum(layer.lora_B[name].weight for name in held)
        x_in = layer.lora_dropout[held[0]](x.to(a.dtype))
        return torch.nn.functional.linear(torch.nn.functional.linear(x_in, a), b) * scalings.pop()

    return delta


def add_experts(adapters: AdapterSet, names: list[str], *, total_rank: int, alpha: float, dropout: float,
                init: float | str, seed: int) -> int:
    """Add a mixture's experts: rank ``total_rank // len(names)`` each (at least 1), every one scaled by the
    total rank's ``alpha / total_rank`` (MoELoRA's convention, shared by CL-MoE and SAME), A drawn as ``init``
    says from one generator seeded with ``seed``; all active. Returns the experts' rank."""
    generator = torch.Generator().manual_seed(int(seed))
    rank = max(1, int(total_rank) // len(names))
    for name in names:
        adapters.add_slot(name, r=rank, alpha=alpha, scaling=alpha / total_rank, dropout=dropout,
                          generator=generator, init=init)
    adapters.activate(names)
    return rank


def snapshot(adapters: AdapterSet, slots: Iterable[str]) -> dict[str, Tensor]:
    """Copies of the slots' weights, by model path."""
    return {path: value.detach().clone() for path, value in adapters.named_parameters(list(slots)).items()}


@torch.no_grad()
def interpolate(adapters: AdapterSet, saved: dict[str, Tensor], keep: float) -> None:
    """Blend each saved weight back in: ``θ ← keep · θ_saved + (1 − keep) · θ``."""
    if not 0.0 <= keep <= 1.0:
        raise ValueError(f"keep must be in [0, 1], got {keep}")
    live = adapters.named_parameters(routers=True)
    missing = [path for path in saved if path not in live]
    if missing:
        raise ValueError(f"the snapshot holds weights this model lacks: {missing[:3]}")
    for path, value in saved.items():
        param = live[path]
        param.mul_(1.0 - keep).add_(value.to(param.device, param.dtype), alpha=keep)
