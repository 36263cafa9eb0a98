"""``tomllib`` (``tomli`` on Python 3.10): the one place that picks the TOML reader.

Standard library only (and tomli), so that completion and the plugin manager
can read prism.toml without importing the configuration schema.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = ["read_toml_or_none", "tomllib"]


def read_toml_or_none(path: Path) -> dict[str, Any] | None:
    """The parsed file, or None when it cannot be read or is not TOML: for readers that must not
    fail (a broken file is left for ``load_config`` to report)."""
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
