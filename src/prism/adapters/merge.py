"""A fixed mix of LoRA slots as plain weights: merged into the base, or folded into one LoRA.

A layer answering with the fixed mix ``{slot_i: w_i}`` computes

    W x + Σ_i w_i · s_i · B_i A_i x        (s_i = the slot's alpha/r)

which is a dense weight ``W + Σ_i w_i s_i B_i A_i`` (:func:`merge_into_base`) or a single
LoRA of rank Σ_i r_i (:func:`fold_into_one_slot`): A stacks the A_i along the rank, B
places the B_i side by side, each multiplied by ``w_i s_i / s`` where ``s`` is the new
slot's scaling. ``s`` is the slots' common ``w_i s_i`` when they share one (then every B_i
is copied unchanged and alpha keeps its meaning), else 1.
"""

from __future__ import annotations

from typing import Mapping

import torch

from prism.adapters.adapter_set import AdapterSet
from prism.adapters.layers import LoRALinear, SlotSpec


def layer_terms(layer: LoRALinear, mix: Mapping[str, float]) -> list[tuple[str, float]]:
    """The (slot, weight) pairs of ``mix`` this layer holds, weight 0 left out, in mix order."""
    return [(slot, float(weight)) for slot, weight in mix.items() if slot in layer.specs and weight != 0]


def merged_delta(layer: LoRALinear, mix: Mapping[str, float]) -> torch.Tensor | None:
    """Σ w_i · s_i · B_i A_i in float32, shape ``[out, in]`` (None when no slot of the mix is here)."""
    delta = None
    for slot, weight in layer_terms(layer, mix):
        term = (weight * layer.scaling[slot]) * (
            layer.lora_B[slot].weight.detach().float() @ layer.lora_A[slot].weight.detach().float())
        delta = term if delta is None else delta + term
    return delta


def merge_into_base(adapters: AdapterSet, mix: Mapping[str, float]) -> None:
    """Add the mix to every adapted layer's base weight and put the plain linear layers back.

    The sum is formed in float32 and rounded once to the base weight's dtype. Every slot and
    router is dropped (the model is the base architecture again, ready for ``save_pretrained``).
    """
    for path, layer in adapters.layers.items():
        delta = merged_delta(layer, mix)
        if delta is None:
            continue
        weight = layer.base_layer.weight
        if not weight.dtype.is_floating_point or type(layer.base_layer).__module__.startswith("bitsandbytes"):
            raise ValueError(f"{path}: cannot merge a LoRA into a quantised layer "
                             f"({type(layer.base_layer).__name__}); load the base model unquantised")
        with torch.no_grad():
            weight.copy_((weight.float() + delta.to(weight.device)).to(weight.dtype))
    adapters.unwrap()


def fold_into_one_slot(adapters: AdapterSet, mix: Mapping[str, float], name: str = "default") -> list[str]:
    """Replace every slot by one slot ``name`` whose LoRA equals the mix exactly; in place.

    Per layer the new rank is the sum of the mixed slots' ranks (different layers may
    differ: peft's ``rank_pattern`` records it). Routers are left alone. Returns the paths
    of the layers that got the slot (empty when the mix adds nothing anywhere).
    """
    folded: dict[str, tuple[SlotSpec, torch.Tensor, torch.Tensor]] = {}
    for path, layer in adapters.layers.items():
        terms = layer_terms(layer, mix)
        if not terms:
            continue
        scales = [weight * layer.scaling[slot] for slot, weight in terms]
        common = scales[0] if all(s == scales[0] for s in scales) else 1.0
        rank = sum(layer.specs[slot].r for slot, _ in terms)
        dropouts = {layer.specs[slot].dropout for slot, _ in terms}
        lora_a = torch.cat([layer.lora_A[slot].weight.detach().float() for slot, _ in terms], dim=0)
        lora_b = torch.cat([layer.lora_B[slot].weight.detach().float() * (scale / common)
                            if scale != common else layer.lora_B[slot].weight.detach().float()
                            for (slot, _), scale in zip(terms, scales)], dim=1)
        spec = SlotSpec(rank, common * rank, dropouts.pop() if len(dropouts) == 1 else 0.0)
        folded[path] = (spec, lora_a, lora_b)
    for slot in adapters.slots:
        adapters.remove_slot(slot)
    for path, (spec, lora_a, lora_b) in folded.items():
        layer = adapters.layers[path]
        layer.add_slot(name, spec, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            layer.lora_A[name].weight.copy_(lora_a)
            layer.lora_B[name].weight.copy_(lora_b)
        layer.lora_A[name].weight.requires_grad_(False)
        layer.lora_B[name].weight.requires_grad_(False)
    adapters.activate([name] if folded else [])
    return list(folded)
