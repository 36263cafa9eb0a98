"""The precedence layers of a configuration and where each given value came from.

A layer holds only the values that were *given* at that level (a nested dict),
plus the origin of every key path. Merging on presence, not truthiness, is what
lets ``--set train.weight_decay=0`` beat a file's ``weight_decay = 0.1``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any, Iterator, Mapping

from prism.config.env_names import ENV_ALIASES, RESERVED_ENV
from prism.config.toml_io import KeyLines, parse_value, read_toml_file
from prism.errors import ConfigError

__all__ = [
    "ENV_ALIASES",
    "FLAG_NAMES",
    "RESERVED_ENV",
    "Layer",
    "Origin",
    "deep_merge",
    "env_layer",
    "file_layer",
    "flags_layer",
    "method_defaults_layer",
    "sets_layer",
]

Path_ = tuple[str, ...]

#: How a dedicated command-line flag is spelled, for provenance and errors. Keys not
#: listed are shown as ``--<last-part>`` (``train.lr`` -> ``--lr``).
FLAG_NAMES: dict[str, str] = {
    "method.id": "--method",
    "backbone.id": "--backbone",
    "backbone.model": "--model",
    "benchmark.id": "--benchmark",
    "benchmark.root": "--data-root",
    "benchmark.tasks": "--tasks",
    "project.output_dir": "--output-dir",
    "project.seed": "--seed",
}


@dataclass(frozen=True)
class Origin:
    """Where one value came from.

    ``label`` is what ``prism config show`` prints ("prism.toml:12", "--set");
    ``where`` is the fuller form errors use ("--set train.lr=abc").
    """

    label: str
    where: str = ""

    @property
    def detail(self) -> str:
        return self.where or self.label


@dataclass
class Layer:
    """Values given at one precedence level and their origins by key path."""

    name: str
    data: dict[str, Any] = field(default_factory=dict)
    origins: dict[Path_, Origin] = field(default_factory=dict)

    def put(self, path: Path_, value: Any, origin: Origin) -> None:
        """Set ``path`` (creating tables on the way) and record origins for it and below."""
        node = self.data
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[path[-1]] = value
        for sub_path in _paths(path, value):
            self.origins[sub_path] = origin

    def get(self, path: Path_) -> tuple[bool, Any]:
        node: Any = self.data
        for part in path:
            if not isinstance(node, dict) or part not in node:
                return False, None
            node = node[part]
        return True, node

    def origin_of(self, path: Path_) -> Origin | None:
        """The origin of ``path`` itself, of something below it, or of a value above it."""
        if path in self.origins:
            return self.origins[path]
        for key, origin in self.origins.items():
            if key[: len(path)] == path:
                return origin
        for end in range(len(path) - 1, 0, -1):
            found, value = self.get(path[:end])
            if found and not isinstance(value, dict):
                return self.origins.get(path[:end])
        return None


def _paths(path: Path_, value: Any) -> Iterator[Path_]:
    yield path
    if isinstance(value, Mapping):
        for key, sub in value.items():
            yield from _paths((*path, str(key)), sub)


def deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` wins wherever it has a key; tables merge key by key."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        elif isinstance(value, Mapping):
            merged[key] = deep_merge({}, value)
        else:
            merged[key] = value
    return merged


def _split_dotted(key: str) -> Path_:
    return tuple(part.strip() for part in key.split("."))


def _valid_path(path: Path_) -> bool:
    return bool(path) and all(path)


# -- the layers, lowest precedence first ---------------------------------------------------
def method_defaults_layer(method_id: str, defaults: Mapping[str, Any]) -> Layer:
    """A method class's ``config_defaults``.

    Under ``method`` only the chosen method's own table is kept: a method may
    neither choose the method nor configure another one.
    """
    layer = Layer("method defaults")
    origin = Origin(f"method default ({method_id})")
    for key, value in defaults.items():
        if key == "method" and isinstance(value, Mapping):
            value = {k: v for k, v in value.items() if k == method_id}
            if not value:
                continue
        layer.put((str(key),), value, origin)
    return layer


def file_layer(path: Path) -> Layer:
    """The values of a prism.toml, each with its line (``prism.toml:12``)."""
    document, text = read_toml_file(path)
    lines = KeyLines(text)
    layer = Layer(str(path), data=document)
    for key, value in document.items():
        for sub_path in _paths((key,), value):
            number = lines.find(sub_path)
            label = f"{path.name}:{number}" if number else path.name
            layer.origins[sub_path] = Origin(label)
    return layer


def env_layer(env: Mapping[str, str]) -> tuple[Layer, list[str]]:
    """Aliases (``PRISM_METHOD``) and generic ``PRISM_<TABLE>__<KEY>`` variables.

    Empty variables count as unset, the usual shell convention (``PRISM_METHOD= prism ...``).
    Other ``PRISM_*`` names are left alone: they may belong to other parts of prism.
    """
    layer = Layer("environment")
    problems: list[str] = []
    aliases = [(n, ENV_ALIASES[n]) for n in ENV_ALIASES if n in env]
    generic = sorted(n for n in env if n.startswith("PRISM_") and "__" in n and n not in RESERVED_ENV)
    for name, dotted in [*aliases, *((n, None) for n in generic)]:
        raw = env[name]
        if raw == "":
            continue
        if dotted is None:
            path = tuple(part.lower() for part in name[len("PRISM_"):].split("__"))
            if len(path) < 2 or not _valid_path(path):
                problems.append(f"env {name}: expected PRISM_<TABLE>__<KEY>, e.g. PRISM_TRAIN__LR")
                continue
        else:
            path = _split_dotted(dotted)
        layer.put(path, parse_value(raw), Origin(f"env {name}"))
    return layer, problems


def sets_layer(sets: list[str]) -> tuple[Layer, list[str]]:
    """``--set key=value`` overrides, in order (a later one wins)."""
    layer = Layer("--set")
    problems: list[str] = []
    for item in sets:
        key, eq, raw = item.partition("=")
        path = _split_dotted(key)
        if not eq or not _valid_path(path):
            problems.append(
                f"--set {item}: expected KEY=VALUE with a dotted key, e.g. --set train.lr=1e-4"
            )
            continue
        layer.put(path, parse_value(raw.strip()), Origin("--set", f"--set {item}"))
    return layer, problems


def flags_layer(flags: Mapping[str, Any]) -> Layer:
    """Values of dedicated flags (``--method ewc``); None means the flag was not given."""
    layer = Layer("flags")
    for dotted, value in flags.items():
        if value is None:
            continue
        path = _split_dotted(dotted)
        if not _valid_path(path):
            raise ConfigError(f"internal: invalid flag key {dotted!r}")
        if isinstance(value, PurePath):  # typer gives Path for path options; the schema holds str
            value = str(value)
        flag = FLAG_NAMES.get(dotted, "--" + path[-1].replace("_", "-"))
        layer.put(path, value, Origin(flag))
    return layer
