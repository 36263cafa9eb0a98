"""Fake methods and file helpers for config tests (real method modules may import torch)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from prism.methods.base import LoRAParams, Method, MethodParams
from prism.registry import Registry


class FakeLoRA(Method):
    id = "ft_lora"
    Params = LoRAParams


class EWCParams(MethodParams):
    ewc_lambda: float = Field(1000.0, gt=0)
    fisher_samples: int = Field(200, ge=1)


class FakeEWC(Method):
    id = "ewc"
    Params = EWCParams
    config_defaults: ClassVar[dict[str, Any]] = {
        "train": {"lr": 1e-3, "weight_decay": 0.5},
        "method": {"id": "ignored", "ewc": {"fisher_samples": 50}},
    }


def fake_registry() -> Registry:
    registry: Registry = Registry("method")
    registry.add("ft_lora", FakeLoRA, "fake lora", provider="test")
    registry.add("ewc", FakeEWC, "fake ewc", provider="test")
    registry.add("broken", "prism_no_such_module_for_tests:Nope", "cannot load", provider="test")
    return registry


def write_toml(folder: Path, text: str, name: str = "prism.toml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path
