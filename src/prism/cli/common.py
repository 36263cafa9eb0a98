"""Helpers shared by the command modules (cheap to import); the shared options are in options.py."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

CONFIG_FILE_NAME = "prism.toml"
#: the arguments prism was started with (after the program name): `prism train` on several
#: processes relaunches itself with exactly these
INVOCATION: list[str] = []


def find_config_file(start: Path | None = None) -> Path | None:
    """PRISM_CONFIG, else the nearest prism.toml walking up from ``start`` (the cwd)."""
    env = os.environ.get("PRISM_CONFIG")
    if env:
        return Path(env)
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / CONFIG_FILE_NAME
        if candidate.is_file():
            return candidate
    return None


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

    return Console(stderr=True)
