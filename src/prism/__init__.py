"""prism: multimodal continual instruction tuning.

Plugin authors import from here: ``hookimpl`` marks their hook functions; the
method contract (``Method``, ``MethodParams``) is importable lazily so that
``import prism`` never pulls torch in.
"""

from __future__ import annotations

import pluggy

__version__ = "0.1.0"

PROJECT_NAME = "prism_mcit"
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

_LAZY = {
    "Method": "prism.methods.base",
    "MethodParams": "prism.methods.base",
    "TaskContext": "prism.methods.base",
    "PrismError": "prism.errors",
    "ConfigError": "prism.errors",
}

__all__ = ["__version__", "hookimpl", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'prism' has no attribute {name!r}")
