"""Parts of the model a method owns besides adapter slots: its modules and the base weights it trains.

A method's routers, prompts and MLPs live under the model (``model.prism_modules[name]``),
so the optimizer, DDP, ZeRO and step checkpoints see them like any other parameter; base
weights a method trains (LLaVA's projector, as HiDe-LLaVA and DisCo do) are marked
trainable by name. Both are saved with every task checkpoint, in prism_state.safetensors
under the prefixes below, and restored before the method's own ``load_state``.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

MODULES_ATTR = "prism_modules"
MODULE_PREFIX = "prism.module."
BASE_PREFIX = "prism.base."


def attach_module(model: nn.Module, name: str, module: nn.Module) -> nn.Module:
    """``module`` as ``model.prism_modules[name]``, on the model's device; returns it."""
    if not name or "." in name:
        raise ValueError(f"invalid module name {name!r}: use a non-empty name without dots")
    holder = getattr(model, MODULES_ATTR, None)
    if holder is None:
        holder = nn.ModuleDict()
        setattr(model, MODULES_ATTR, holder)
    if name in holder:
        raise ValueError(f"the model already holds a method module named {name!r}")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    holder[name] = module.to(device)
    return holder[name]


def owned_modules(model: nn.Module) -> dict[str, nn.Module]:
    holder = getattr(model, MODULES_ATTR, None)
    return dict(holder.items()) if holder is not None else {}


def train_base(model: nn.Module, pattern: str) -> list[str]:
    """Make the base parameters whose name matches ``pattern`` (re.search) trainable; their names."""
    regex = re.compile(pattern)
    names = [n for n, _ in model.named_parameters() if regex.search(n) and not n.startswith(MODULES_ATTR + ".")
             and ".lora_" not in n and ".routers." not in n]
    if not names:
        raise ValueError(f"no base parameter of the model matches {pattern!r}")
    params = dict(model.named_parameters())
    for name in names:
        params[name].requires_grad_(True)
    return names


def owned_state(model: nn.Module, base_names: list[str]) -> dict[str, torch.Tensor]:
    """The tensors to save: every owned module's state and the trained base weights."""
    state: dict[str, torch.Tensor] = {}
    for name, module in owned_modules(model).items():
        for key, value in module.state_dict().items():
            state[f"{MODULE_PREFIX}{name}.{key}"] = value
    params = dict(model.named_parameters())
    for name in base_names:
        state[BASE_PREFIX + name] = params[name]
    return state


@torch.no_grad()
def load_owned_state(model: nn.Module, base_names: list[str], tensors: dict[str, Any]) -> dict[str, Any]:
    """Restore what ``owned_state`` saved; returns the other tensors (the method's own state)."""
    modules = owned_modules(model)
    grouped: dict[str, dict[str, Any]] = {}
    rest: dict[str, Any] = {}
    for key, value in tensors.items():
        if key.startswith(MODULE_PREFIX):
            name, _, inner = key[len(MODULE_PREFIX):].partition(".")
            grouped.setdefault(name, {})[inner] = value
        elif key.startswith(BASE_PREFIX):
            continue
        else:
            rest[key] = value
    unknown = sorted(set(grouped) - set(modules))
    if unknown:
        from prism.errors import CheckpointError

        raise CheckpointError(f"the checkpoint holds method modules this method did not create: {unknown}",
                              hint="load it with the method (and the method settings) that saved it")
    for name, module in modules.items():
        if name in grouped:
            module.load_state_dict(grouped[name])
    params = dict(model.named_parameters())
    for name in base_names:
        key = BASE_PREFIX + name
        if key in tensors:
            params[name].copy_(tensors[key].to(params[name].device, params[name].dtype))
    return rest
