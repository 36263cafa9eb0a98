"""How a configuration problem is told: where the value came from, which key, what is wrong.

Every message reads ``<source>: [table] key: message`` (``prism.toml:12: [train] lr:
...``); the problems of all phases are collected and raised as one ConfigError.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from pydantic import BaseModel, ValidationError

from prism.config.layers import Layer
from prism.config.schema import PrismConfig
from prism.errors import ConfigError
from prism.registry import did_you_mean

__all__ = ["INT64", "KeyPath", "config_error", "source_of", "table_key", "validate", "value_sources",
           "without_bad_numbers"]

KeyPath = tuple[str, ...]

#: TOML integers are 64-bit; Python's parser (and ``--set``) accept any size
INT64 = (-(2**63), 2**63 - 1)


def without_bad_numbers(data: dict[str, Any], prefix: KeyPath, layers: list[Layer],
                         problems: list[str]) -> dict[str, Any]:
    """``data`` without the numbers no setting may hold (inf, nan, integers beyond 64 bits), each
    reported once with its key and source; the rest is validated as usual."""
    kept: dict[str, Any] = {}
    for key, value in data.items():
        path = (*prefix, str(key))
        if isinstance(value, dict):
            kept[key] = without_bad_numbers(value, path, layers, problems)
            continue
        reason = _bad_number(value)
        if reason is None:
            kept[key] = value
        else:
            problems.append(f"{source_of(path, layers)}: {table_key(path)}: {reason} (got {_short(value)})")
    return kept


def _bad_number(value: Any) -> str | None:
    if isinstance(value, (list, tuple)):
        return next((reason for reason in map(_bad_number, value) if reason), None)
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number"
    if isinstance(value, int) and not isinstance(value, bool) and not INT64[0] <= value <= INT64[1]:
        return "integer out of range (a setting holds at most a 64-bit integer, |n| < 2**63)"
    return None


def validate(model: type[BaseModel], data: Any, prefix: KeyPath, layers: list[Layer],
              problems: list[str]):
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors():
            line = _describe(error, model, prefix, layers)
            if line not in problems:
                problems.append(line)
        return None


def _describe(error: Any, root: type[BaseModel], prefix: KeyPath, layers: list[Layer]) -> str:
    """``<source>: [table] key: message`` for one pydantic error."""
    rel, owner, is_table = _key_path(tuple(error["loc"]), root)
    path = (*prefix, *rel)
    kind = error["type"]
    if kind == "extra_forbidden":
        choices = list(owner.model_fields) if owner is not None else []
        noun = "table" if len(path) == 1 else "key"
        message = f"unknown {noun}{did_you_mean(path[-1], choices)}"
    elif kind in ("model_type", "dict_type", "model_attributes_type"):
        target = ".".join(path)
        message = f"expected a table [{target}], got {_short(error.get('input'))}"
        if path[:1] == ("method",) and len(path) == 2:
            message += "; method hyper-parameters go in [method.<id>] tables"
    else:
        message = str(error["msg"]).removeprefix("Value error, ")
        given = error.get("input")
        if not isinstance(given, (dict, BaseModel)) and kind != "missing":
            message += f" (got {_short(given)})"
    location = f"[{'.'.join(path)}]" if is_table else table_key(path)
    return f"{source_of(path, layers)}: {location}: {message}"


def _key_path(loc: tuple[Any, ...], root: type[BaseModel]
              ) -> tuple[KeyPath, type[BaseModel] | None, bool]:
    """The config key an error location points at, the model owning its last part, and
    whether it is a whole table (a model-level check such as micro <= global batch size).

    Stops at the first non-model field, so union member names and list indices
    that pydantic appends stay out of the key.
    """
    model: type[BaseModel] | None = root
    owner: type[BaseModel] | None = root
    path: list[str] = []
    for part in loc:
        if not isinstance(part, str) or model is None:
            break
        path.append(part)
        owner = model
        info = model.model_fields.get(part)
        annotation = info.annotation if info is not None else None
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    is_table = model is not None and len(path) == len(loc)
    return tuple(path), owner, is_table


def table_key(path: KeyPath) -> str:
    if len(path) <= 1:
        return f"[{'.'.join(path)}]"
    return f"[{'.'.join(path[:-1])}] {path[-1]}"


def source_of(path: KeyPath, layers: list[Layer]) -> str:
    for layer in reversed(layers):
        origin = layer.origin_of(path)
        if origin is not None:
            return origin.detail
    return "default"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def config_error(problems: list[str]) -> ConfigError:
    hint = "`prism config show` lists every setting with its source; see the comments in `prism init`'s prism.toml"
    if len(problems) == 1:
        return ConfigError(f"invalid configuration: {problems[0]}", hint=hint)
    body = "\n".join(f"  - {problem}" for problem in problems)
    return ConfigError(f"invalid configuration ({len(problems)} problems):\n{body}", hint=hint)


def value_sources(config: PrismConfig, layers: list[Layer]) -> dict[str, str]:
    """Dotted key -> where its value came from, for every leaf of the resolved config."""
    sources: dict[str, str] = {}
    for path in _leaf_paths(config.model_dump(mode="json")):
        label = "default"
        for layer in reversed(layers):
            origin = layer.origin_of(path)
            if origin is not None:
                label = origin.label
                break
        sources[".".join(path)] = label
    return sources


def _leaf_paths(data: Mapping[str, Any], prefix: KeyPath = ()) -> list[KeyPath]:
    """Leaves are the fields of the core tables and of method tables (dict values stay whole)."""
    paths: list[KeyPath] = []
    for key, value in data.items():
        path = (*prefix, key)
        descend = isinstance(value, Mapping) and (len(path) == 1 or path[:1] == ("method",) and len(path) == 2)
        paths.extend(_leaf_paths(value, path) if descend else [path])
    return paths
