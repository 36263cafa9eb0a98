"""Helpers shared by the command modules (cheap to import); the shared options are in options.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from prism.config.discovery import CONFIG_FILE_NAME, find_config  # noqa: F401 - commands read the name here

#: the arguments prism was started with (after the program name): `prism train` on several
#: processes relaunches itself with exactly these
INVOCATION: list[str] = []


def find_config_file(start: Path | None = None) -> Path | None:
    """PRISM_CONFIG, else the nearest prism.toml walking up from ``start`` (the cwd)."""
    found = find_config(cwd=start)
    return found.path if found is not None else None


def project_dir_for_plugins() -> Path:
    """The folder whose plugins/*.py load: where prism.toml is, else the cwd."""
    found = find_config_file()
    return found.resolve().parent if found is not None and found.exists() else Path.cwd()


def emit_json(obj: Any) -> None:
    """JSON to stdout (human output goes to stderr)."""
    sys.stdout.write(json.dumps(obj, indent=2, default=str, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def stderr_console():
    from rich.console import Console

    return Console(stderr=True, emoji=False)
