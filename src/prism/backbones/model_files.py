"""The files of a model or tower folder that prism reads itself: JSON configs and shard indexes.

Shared by the original-LLaVA converter, the vision-tower loaders and InternViT,
so none of them imports another for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prism.errors import ConfigError, PrismError
from prism.jsonfile import JsonProblem, read_json

__all__ = ["index_shards", "read_config_json"]


def _config_error(problem: JsonProblem) -> ConfigError:
    if problem.kind == "not_object":
        return ConfigError(f"{problem.path}: expected a JSON object")
    return ConfigError(f"{problem.path}: cannot read it as JSON ({problem.cause})")


def read_config_json(path: Path) -> dict[str, Any]:
    """A JSON object from a model folder (config.json, an index); ConfigError naming the file otherwise."""
    return read_json(path, want_object=True, error=_config_error)


def index_shards(index: Path, error: type[PrismError] = ConfigError) -> list[Path]:
    """The weight files a ``*.index.json`` names, each once and sorted.

    ``error`` (with the file in its message) when the index names no shard or
    some of them are not in the folder.
    """
    weight_map = read_config_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise error(f"{index} has no weight_map")
    files = [index.parent / shard for shard in sorted(set(map(str, weight_map.values())))]
    missing = [file.name for file in files if not file.is_file()]
    if missing:
        raise error(f"{index} names shards that are missing: {', '.join(missing)}",
                    hint="the download is incomplete")
    return files
