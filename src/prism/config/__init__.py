"""Configuration: the prism.toml schema, loading with precedence and provenance.

The names below are imported on first use (PEP 562), so that reading a
submodule that needs only the standard library (``discovery``, ``env_names``,
``toml_compat``: shell completion, the plugin manager) does not import pydantic.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_HOMES = {
    "CONFIG_FILE_NAME": "prism.config.discovery",
    "discover_config": "prism.config.loader",
    "HASH_EXCLUDED": "prism.config.loader",
    "RESOLVED_FILE_NAME": "prism.config.loader",
    "ResolvedConfig": "prism.config.loader",
    "load_config": "prism.config.loader",
    "ENV_ALIASES": "prism.config.env_names",
    "RESERVED_ENV": "prism.config.env_names",
    "FLAG_NAMES": "prism.config.layers",
    "BackboneConfig": "prism.config.schema",
    "BenchmarkConfig": "prism.config.schema",
    "InferConfig": "prism.config.schema",
    "MethodConfig": "prism.config.schema",
    "PluginsConfig": "prism.config.schema",
    "PrismConfig": "prism.config.schema",
    "ProjectConfig": "prism.config.schema",
    "TrainConfig": "prism.config.schema",
    "task_selection": "prism.config.selection",
    "default_toml_text": "prism.config.template",
}

__all__ = [  # the same names as _HOMES
    "BackboneConfig",
    "BenchmarkConfig",
    "CONFIG_FILE_NAME",
    "ENV_ALIASES",
    "FLAG_NAMES",
    "HASH_EXCLUDED",
    "InferConfig",
    "MethodConfig",
    "PluginsConfig",
    "PrismConfig",
    "ProjectConfig",
    "RESERVED_ENV",
    "RESOLVED_FILE_NAME",
    "ResolvedConfig",
    "TrainConfig",
    "default_toml_text",
    "discover_config",
    "load_config",
    "task_selection",
]

if TYPE_CHECKING:
    from prism.config.discovery import CONFIG_FILE_NAME
    from prism.config.env_names import ENV_ALIASES, RESERVED_ENV
    from prism.config.layers import FLAG_NAMES
    from prism.config.loader import HASH_EXCLUDED, RESOLVED_FILE_NAME, ResolvedConfig, discover_config, load_config
    from prism.config.schema import (
        BackboneConfig,
        BenchmarkConfig,
        InferConfig,
        MethodConfig,
        PluginsConfig,
        PrismConfig,
        ProjectConfig,
        TrainConfig,
    )
    from prism.config.selection import task_selection
    from prism.config.template import default_toml_text


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'prism.config' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})
