"""Configuration: the prism.toml schema, loading with precedence and provenance.

Cheap to import (pydantic only): ``prism --help`` and shell completion load it.
"""

from __future__ import annotations

from prism.config.loader import (
    CONFIG_FILE_NAME,
    HASH_EXCLUDED,
    RESOLVED_FILE_NAME,
    ResolvedConfig,
    discover_config,
    load_config,
)
from prism.config.layers import ENV_ALIASES, FLAG_NAMES, RESERVED_ENV
from prism.config.schema import (
    BackboneConfig,
    BenchmarkConfig,
    InferConfig,
    MethodConfig,
    PluginsConfig,
    PrismConfig,
    ProjectConfig,
    TrainConfig,
    task_selection,
)
from prism.config.template import default_toml_text

__all__ = [
    "CONFIG_FILE_NAME",
    "ENV_ALIASES",
    "FLAG_NAMES",
    "HASH_EXCLUDED",
    "RESERVED_ENV",
    "RESOLVED_FILE_NAME",
    "BackboneConfig",
    "BenchmarkConfig",
    "InferConfig",
    "MethodConfig",
    "PluginsConfig",
    "PrismConfig",
    "ProjectConfig",
    "ResolvedConfig",
    "TrainConfig",
    "default_toml_text",
    "discover_config",
    "load_config",
    "task_selection",
]
