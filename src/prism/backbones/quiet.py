"""Quiet transformers and the hub while prism loads or saves models (no bars, warnings or info logs).

The lowest module of the backbones: every loader uses it, and it imports no other.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Iterator

__all__ = ["quiet_transformers"]


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' and the hub's progress bars, warnings and info logs for a while."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
        hub_bars_were_disabled = are_progress_bars_disabled()
        disable_progress_bars()
    except ImportError:  # pragma: no cover - huggingface_hub always comes with transformers
        hub_bars_were_disabled = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
        if not hub_bars_were_disabled:
            enable_progress_bars()
