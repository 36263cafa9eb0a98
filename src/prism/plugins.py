"""Plugin manager: built-ins, installed distributions and local ``plugins/*.py``.

Each plugin is loaded and each of its hooks is called inside its own
try/except, so one broken plugin is reported (``prism plugins``) instead of
taking the CLI down. ``PRISM_STRICT_PLUGINS=1`` re-raises instead.
``PRISM_DISABLE_PLUGIN_AUTOLOAD=1`` skips installed entry points (hermetic tests).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy

from prism import PROJECT_NAME, hookspecs
from prism.errors import PluginError
from prism.registry import Registry

ENTRY_POINT_GROUP = "prism_mcit"
KINDS = ("method", "backbone", "benchmark", "metric")


@dataclass
class PluginInfo:
    """What `prism plugins` shows about one plugin."""

    name: str
    provider: str  # "builtin", "dist==version" or "local:<path>"
    hooks: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _strict() -> bool:
    return _truthy("PRISM_STRICT_PLUGINS")


def _disabled_names() -> set[str]:
    raw = os.environ.get("PRISM_DISABLED_PLUGINS", "")
    return {part.strip() for part in raw.split(",") if part.strip()}


class PluginManager:
    """Loads plugins once and builds the four registries from their hooks."""

    def __init__(self, project_dir: Path | None = None, *, autoload: bool | None = None,
                 extra_plugins: list[tuple[str, Any]] | None = None):
        self.pm = pluggy.PluginManager(PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}
        self._providers: dict[int, PluginInfo] = {}
        if autoload is None:
            autoload = not _truthy("PRISM_DISABLE_PLUGIN_AUTOLOAD")
        self._add("builtin", "builtin", lambda: importlib.import_module("prism.builtin_plugin"))
        if autoload:
            self._load_entry_points()
        if project_dir is not None:
            self._load_local(Path(project_dir) / "plugins")
        for name, obj in extra_plugins or []:
            self._add(name, f"local:{name}", lambda obj=obj: obj)
        self.registries: dict[str, Registry] = {kind: Registry(kind) for kind in KINDS}
        for kind in KINDS:
            self._collect(kind)

    # -- loading -------------------------------------------------------------
    def _add(self, name: str, provider: str, loader) -> None:
        info = PluginInfo(name=name, provider=provider)
        self.infos[name] = info
        if name in _disabled_names():
            info.errors.append("disabled by PRISM_DISABLED_PLUGINS")
            return
        try:
            plugin = loader()
            self.pm.register(plugin, name=name)
        except Exception as exc:
            if _strict():
                raise
            info.errors.append(f"failed to load: {type(exc).__name__}: {exc}")
            return
        info.hooks = sorted(
            impl.name for impl in self.pm.get_hookcallers(plugin) or []
        )
        self._providers[id(plugin)] = info

    def _load_entry_points(self) -> None:
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = getattr(ep, "dist", None)
            provider = f"{dist.name}=={dist.version}" if dist is not None else ep.value
            self._add(ep.name, provider, ep.load)

    def _load_local(self, folder: Path) -> None:
        if not folder.is_dir():
            return
        for path in sorted(folder.glob("*.py")):
            if path.name.startswith("_"):
                continue
            self._add(f"local:{path.stem}", f"local:{path}", lambda path=path: _import_file(path))

    # -- registration --------------------------------------------------------
    def _collect(self, kind: str) -> None:
        registry = self.registries[kind]
        caller = getattr(self.pm.hook, f"register_{kind}s")
        for impl in caller.get_hookimpls():  # registration order: built-ins first
            info = self._providers.get(id(impl.plugin))
            if info is None:
                continue

            def register(id: str, target: Any, summary: str = "", _info=info, **extra: Any) -> None:
                try:
                    registry.add(id, target, summary, provider=_info.provider, **extra)
                except PluginError as exc:  # a clash loses only the clashing id
                    if _strict():
                        raise
                    _info.errors.append(str(exc))

            try:
                impl.function(register=register)
            except Exception as exc:
                if _strict():
                    raise
                info.errors.append(f"register_{kind}s failed: {type(exc).__name__}: {exc}")

    def add_commands(self, app: Any, core_names: set[str]) -> None:
        """Let plugins add commands; a plugin may not shadow a core command."""
        for impl in self.pm.hook.register_commands.get_hookimpls():
            info = self._providers.get(id(impl.plugin))
            if info is None or info.provider == "builtin":
                continue
            before = [*app.registered_commands, *app.registered_groups]
            try:
                impl.function(app=app)
            except Exception as exc:
                if _strict():
                    raise
                info.errors.append(f"register_commands failed: {type(exc).__name__}: {exc}")
                continue
            for collection in (app.registered_commands, app.registered_groups):
                for item in [i for i in collection if not any(i is b for b in before)]:
                    name = _command_name(item)
                    if name in core_names:
                        collection.remove(item)
                        info.errors.append(f"command {name!r} shadows a core prism command and was ignored")

    def registry(self, kind: str) -> Registry:
        return self.registries[kind]


def _command_name(item: Any) -> str | None:
    if getattr(item, "name", None):
        return item.name
    callback = getattr(item, "callback", None)
    if callback is None and getattr(item, "typer_instance", None) is not None:
        return item.typer_instance.info.name
    return callback.__name__.replace("_", "-") if callback else None


def _import_file(path: Path) -> ModuleType:
    module_name = f"prism_local_plugins.{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise PluginError(f"cannot import local plugin {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    return module


_MANAGER: PluginManager | None = None
_MANAGER_DIR: Path | None = None


def get_manager(project_dir: Path | None = None) -> PluginManager:
    """The process-wide plugin manager (rebuilt if the project dir changes)."""
    global _MANAGER, _MANAGER_DIR
    if _MANAGER is None or (project_dir is not None and project_dir != _MANAGER_DIR):
        _MANAGER = PluginManager(project_dir)
        _MANAGER_DIR = project_dir
    return _MANAGER


def reset_manager() -> None:
    global _MANAGER, _MANAGER_DIR
    _MANAGER = None
    _MANAGER_DIR = None


def registry(kind: str, project_dir: Path | None = None) -> Registry:
    return get_manager(project_dir).registry(kind)
