"""Wrap a model's target linear layers with ``LoRALinear`` and hand methods an ``AdapterSet``.

Paths are module paths of the model given to ``inject_adapters`` (for LLaVA:
``model.language_model.layers.0.self_attn.q_proj``). Inject on the top-level model,
the one saved with ``save_pretrained``, so the paths are the ones peft sees.
"""

from __future__ import annotations

import re
from typing import Iterator

from torch import nn

from prism.adapters.adapter_set import AdapterSet, sample_paths
from prism.adapters.layers import LoRALinear
from prism.errors import ConfigError


def base_module_paths(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``named_modules`` of the model as it was before wrapping: a wrapper's path stands for
    the original linear, and nothing inside a wrapper is listed."""
    inside: str | None = None
    for path, module in model.named_modules():
        if inside is not None and path.startswith(inside):
            continue
        inside = None
        yield path, module
        if isinstance(module, LoRALinear):
            inside = path + "."


def _is_linear(module: nn.Module) -> bool:
    """nn.Linear and its subclasses, which include bitsandbytes' Linear8bitLt and Linear4bit."""
    return isinstance(module, nn.Linear)


def inject_adapters(model: nn.Module, target: str) -> AdapterSet:
    """Wrap every linear layer whose full path matches ``target`` (``re.fullmatch``) in place.

    Idempotent: layers wrapped before are reused with their slots. Raises ``ConfigError``
    when ``target`` matches no linear layer, listing some paths that exist.
    """
    try:
        pattern = re.compile(target)
    except re.error as exc:
        raise ConfigError(f"target_modules {target!r} is not a valid regular expression: {exc}") from exc
    modules = [(p, m) for p, m in base_module_paths(model) if p]
    matched = [(p, m) for p, m in modules if pattern.fullmatch(p)]
    linear = [(p, m) for p, m in matched if _is_linear(m) or isinstance(m, LoRALinear)]
    if not linear:
        linear_paths = [p for p, m in modules if _is_linear(m) or isinstance(m, LoRALinear)]
        what = (
            f"matches {len(matched)} module(s) but no linear layer (e.g. {matched[0][0]!r})"
            if matched else "matches no module path"
        )
        raise ConfigError(
            f"target_modules {target!r} {what}. Linear layers of this model include: "
            + ", ".join(sample_paths(linear_paths)),
            hint="the regex must match the whole path (re.fullmatch), e.g. "
            r"'model\.language_model\.layers\.\d+\.self_attn\.(q_proj|v_proj)', or use a preset "
            "(attn, ffn, attn_and_ffn, all_linear)",
        )
    for path, module in linear:
        if isinstance(module, LoRALinear):
            continue
        parent_path, _, child = path.rpartition(".")
        parent = model.get_submodule(parent_path)
        setattr(parent, child, LoRALinear(module, path))
    return AdapterSet(model, targets=[target])


