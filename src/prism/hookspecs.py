"""The hooks a prism plugin may implement.

Every hook is a registration callback: prism calls it with a ``register``
function and the plugin calls ``register(id, "module:Class", "one-line summary")``
for each thing it provides. Built-ins use the very same hooks.
"""

from __future__ import annotations

from typing import Any, Callable

import pluggy

from prism import PROJECT_NAME

hookspec = pluggy.HookspecMarker(PROJECT_NAME)

Register = Callable[..., None]


@hookspec
def register_methods(register: Register) -> None:
    """Register continual-learning methods: ``register("ewc", "pkg.mod:EWC", "summary")``."""


@hookspec
def register_backbones(register: Register) -> None:
    """Register backbones (model families): ``register("llava", "pkg.mod:Llava", "summary")``."""


@hookspec
def register_benchmarks(register: Register) -> None:
    """Register benchmarks (task sequences): ``register("ucit", "pkg.mod:UCIT", "summary")``."""


@hookspec
def register_metrics(register: Register) -> None:
    """Register per-task metrics: ``register("exact_match", "pkg.mod:exact_match", "summary")``."""


@hookspec
def register_commands(app: Any) -> None:
    """Add commands to the ``prism`` typer app (core commands cannot be shadowed)."""
