"""Lazy registries of methods, backbones, benchmarks and metrics.

Entries are registered as ``"module:attr"`` strings plus a one-line summary, so
listing what exists never imports the (torch-heavy) implementation. The object
is imported on first ``load``.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass, field
from typing import Any, Generic, Iterator, TypeVar

from prism.errors import PluginError, UsageError

T = TypeVar("T")


@dataclass
class Entry:
    """One registered thing: where it lives and who provided it."""

    id: str
    target: str | Any
    summary: str
    provider: str
    extra: dict[str, Any] = field(default_factory=dict)
    _loaded: Any = None

    def load(self) -> Any:
        if self._loaded is not None:
            return self._loaded
        if not isinstance(self.target, str):
            self._loaded = self.target
            return self._loaded
        module_name, _, attr = self.target.partition(":")
        if not attr:
            raise PluginError(
                f"{self.id!r} from {self.provider} is registered as {self.target!r}, "
                "which is not of the form 'module:attribute'"
            )
        try:
            module = importlib.import_module(module_name)
            obj = module
            for part in attr.split("."):
                obj = getattr(obj, part)
        except KeyboardInterrupt:  # Ctrl-C stops prism, whoever was importing
            raise
        except BaseException as exc:  # noqa: BLE001 - a sys.exit at import too must name the plugin
            raise PluginError(
                f"could not load {self.id!r} ({self.target}) from {self.provider}: "
                f"{_failure(exc, module_name)}"
            ) from exc
        self._loaded = obj
        return obj


def _failure(exc: BaseException, module_name: str) -> str:
    """An import error as ``Type: message``; an exit (SystemExit, any BaseException) says so,
    because it would otherwise end prism silently."""
    if isinstance(exc, Exception):
        return f"{type(exc).__name__}: {exc}"
    if isinstance(exc, SystemExit):
        return f"module {module_name} tried to exit the process while loading (SystemExit({exc.code!r}))"
    detail = f": {exc}" if str(exc) else ""
    return f"module {module_name} raised {type(exc).__name__}{detail} while loading (a BaseException)"


def did_you_mean(name: str, choices: list[str] | Iterator[str]) -> str:
    """' (did you mean 'x'?)' or '' — appended to unknown-name errors."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class Registry(Generic[T]):
    """Id -> Entry, with clash detection naming both providers."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def add(self, id: str, target: str | Any, summary: str = "", *, provider: str, **extra: Any) -> None:
        if not isinstance(id, str) or not id:
            raise PluginError(f"{provider} registered a {self.kind} with an empty or non-string id")
        if id in self._entries:
            other = self._entries[id]
            raise PluginError(
                f"{self.kind} id {id!r} is registered twice: by {other.provider} and by {provider}",
                hint="uninstall or disable one of the two plugins (PRISM_DISABLED_PLUGINS)",
            )
        self._entries[id] = Entry(id=id, target=target, summary=summary, provider=provider, extra=extra)

    def __contains__(self, id: str) -> bool:
        return id in self._entries

    def __iter__(self) -> Iterator[Entry]:
        return iter(sorted(self._entries.values(), key=lambda e: e.id))

    def __len__(self) -> int:
        return len(self._entries)

    def ids(self) -> list[str]:
        return sorted(self._entries)

    def entry(self, id: str) -> Entry:
        try:
            return self._entries[id]
        except KeyError:
            known = ", ".join(self.ids()) or "none"
            raise UsageError(
                f"unknown {self.kind} {id!r}{did_you_mean(id, self._entries)}; known: {known}",
                hint=f"`prism {self.kind}s list` shows what is installed" if self.kind == "method" else None,
            ) from None

    def load(self, id: str) -> T:
        return self.entry(id).load()
