"""Which prism.toml a command uses: the one named, else the nearest one upwards.

The loader, the CLI, the plugin manager and shell completion all ask this one
function. It imports only the standard library: completion calls it on every TAB.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from prism.config.env_names import CONFIG_ENV

__all__ = ["CONFIG_FILE_NAME", "FoundConfig", "find_config"]

CONFIG_FILE_NAME = "prism.toml"


@dataclass(frozen=True)
class FoundConfig:
    """A config file and how it was chosen."""

    path: Path
    #: "config file" (the path given), "PRISM_CONFIG", or None when found searching upwards
    named_by: str | None


def find_config(given: Path | str | None = None, *, cwd: Path | str | None = None,
                env: Mapping[str, str] | None = None, search: bool = True) -> FoundConfig | None:
    """The file ``given`` names, else ``$PRISM_CONFIG``, else (``search``) the nearest prism.toml
    in ``cwd`` or a folder above it; None when there is none.

    A named path may be a folder (its prism.toml is meant); relative names are under ``cwd``.
    A named file is returned whether it exists or not: what a missing one means is the caller's
    to say. An empty ``PRISM_CONFIG`` counts as unset.
    """
    env = os.environ if env is None else env
    here = (Path(cwd) if cwd is not None else Path.cwd()).resolve()
    named, what = (given, "config file") if given is not None else (env.get(CONFIG_ENV) or None, CONFIG_ENV)
    if named is not None:
        path = Path(named).expanduser()
        path = path if path.is_absolute() else here / path
        return FoundConfig(path / CONFIG_FILE_NAME if path.is_dir() else path, what)
    if search:
        for folder in (here, *here.parents):
            candidate = folder / CONFIG_FILE_NAME
            if candidate.is_file():
                return FoundConfig(candidate, None)
    return None
