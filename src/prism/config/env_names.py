"""The PRISM_* environment variables prism reads, named once.

Standard library only: shell completion and the plugin manager read these
without importing the configuration schema.
"""

from __future__ import annotations

__all__ = ["CONFIG_ENV", "ENV_ALIASES", "RESERVED_ENV"]

#: the config file to use instead of the nearest prism.toml
CONFIG_ENV = "PRISM_CONFIG"

#: Short environment names for the settings people change most.
ENV_ALIASES: dict[str, str] = {
    "PRISM_BACKBONE": "backbone.id",
    "PRISM_MODEL": "backbone.model",
    "PRISM_METHOD": "method.id",
    "PRISM_BENCHMARK": "benchmark.id",
    "PRISM_DATA_ROOT": "benchmark.root",
    "PRISM_OUTPUT_DIR": "project.output_dir",
    "PRISM_SEED": "project.seed",
    "PRISM_TASKS": "benchmark.tasks",
}

#: PRISM_* variables that steer prism itself and are never config values.
RESERVED_ENV = frozenset({
    CONFIG_ENV, "PRISM_DEBUG", "PRISM_STRICT_PLUGINS", "PRISM_DISABLE_PLUGIN_AUTOLOAD",
    "PRISM_DISABLED_PLUGINS", "PRISM_LOAD_PLUGINS", "PRISM_TRACE_PLUGINS",
})
