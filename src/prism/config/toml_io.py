"""Reading, writing and line-finding for TOML: tomllib reads, tomli-w writes.

The writer covers the value types a resolved config holds (str, int, float,
bool, lists, nested tables); ``None`` has no TOML form and is written as a
comment, which reads back as "not given".
"""

from __future__ import annotations

import datetime as _dt
import re
from pathlib import Path
from typing import Any, Mapping

import tomli_w

from prism.atomic import write_file_atomic as atomic_write_text  # noqa: F401 - its old home
from prism.config.toml_compat import tomllib
from prism.errors import ConfigError

__all__ = ["read_toml_file", "parse_value", "dumps", "format_value", "atomic_write_text", "KeyLines"]

_NONE_WORDS = {"none", "null"}


def read_toml_file(path: Path) -> tuple[dict[str, Any], str]:
    """The parsed document and its text; syntax errors name the file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"line (\d+)", str(exc))
        where = f"{path}:{match.group(1)}" if match else str(path)
        raise ConfigError(
            f"{where}: invalid TOML: {exc}",
            hint="strings need quotes (name = \"x\"), tables are written [table]",
        ) from None


def parse_value(raw: str) -> Any:
    """An environment or ``--set`` value: TOML when it parses, else the plain string.

    ``none``/``null`` mean None, so an optional setting given in the file can be
    cleared from the command line (``--set train.max_steps=none``).
    """
    if raw.strip().lower() in _NONE_WORDS:
        return None
    try:
        parsed = tomllib.loads(f"value = {raw}")
    except tomllib.TOMLDecodeError:
        return raw
    if set(parsed) != {"value"}:  # "1\nother = 2" must not smuggle in a second key
        return raw
    value = parsed["value"]
    if isinstance(value, (_dt.date, _dt.time)):  # dates are no config value: keep what was typed
        return raw
    return value


# -- writing ---------------------------------------------------------------------------
def _key(key: str) -> str:
    """A key as TOML writes it (bare, or quoted and escaped), by tomli-w."""
    return tomli_w.dumps({key: 0}).rpartition(" = ")[0]


def _scalar(value: Any) -> str:
    """A string, number or bool in TOML syntax, by tomli-w (TypeError for what TOML cannot hold)."""
    return tomli_w.dumps({"v": value})[len("v = "):].rstrip("\n")


def format_value(value: Any) -> str:
    """One value in TOML syntax on one line (arrays inline, dicts as inline tables; None items left out)."""
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_value(v) for v in value if v is not None) + "]"
    if isinstance(value, Mapping):
        items = [f"{_key(str(k))} = {format_value(v)}" for k, v in value.items() if v is not None]
        return "{ " + ", ".join(items) + " }" if items else "{}"
    return _scalar(value)


def dumps(document: Mapping[str, Any], header: str = "") -> str:
    """A document of tables as TOML text: scalars first, then one ``[section]`` per table.

    tomli-w formats every key and value; this adds what it does not write: the
    ``header`` as comments, a ``# <key> is not set`` line for each None (TOML has no
    null: the line reads back as "not given") and arrays kept on one line.
    """
    lines: list[str] = [f"# {line}" if line else "#" for line in header.splitlines()]
    _write_table(lines, (), document)
    return "\n".join(lines).strip("\n") + "\n"


def _write_table(lines: list[str], path: tuple[str, ...], table: Mapping[str, Any]) -> None:
    if path:
        if lines:
            lines.append("")
        lines.append("[" + ".".join(_key(p) for p in path) + "]")
    for key, value in table.items():
        if isinstance(value, Mapping):
            continue
        if value is None:
            lines.append(f"# {_key(key)} is not set")
        else:
            lines.append(f"{_key(key)} = {format_value(value)}")
    for key, value in table.items():
        if isinstance(value, Mapping):
            _write_table(lines, (*path, str(key)), value)


# -- line finding ----------------------------------------------------------------------
_HEADER = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEYLINE = re.compile(r"^\s*((?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*'))*)\s*=")
_PART = re.compile(r"[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*'")


def _split_key(text: str) -> tuple[str, ...]:
    return tuple(part.strip("\"'") for part in _PART.findall(text))


class KeyLines:
    """Best-effort map from dotted key paths to the line that sets them.

    A line scanner, not a parser: it follows ``[table]`` headers and
    ``key = value`` lines, which is what hand-written config files contain.
    """

    def __init__(self, text: str):
        self.lines: dict[tuple[str, ...], int] = {}
        table: tuple[str, ...] = ()
        for number, line in enumerate(text.splitlines(), start=1):
            header = _HEADER.match(line)
            if header:
                table = _split_key(header.group(1))
                self.lines.setdefault(table, number)
                continue
            keyline = _KEYLINE.match(line)
            if keyline and not line.lstrip().startswith("#"):
                self.lines.setdefault((*table, *_split_key(keyline.group(1))), number)

    def find(self, path: tuple[str, ...]) -> int | None:
        """The line of ``path``, else of its nearest enclosing table given in the file."""
        for end in range(len(path), 0, -1):
            number = self.lines.get(path[:end])
            if number is not None:
                return number
        return None
