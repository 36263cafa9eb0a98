"""Plugin manager: built-ins, installed distributions and local ``plugins/*.py``.

Each plugin is loaded and each of its hooks is called inside its own
try/except, so one broken plugin is reported (``prism plugins``) instead of
taking the CLI down. That includes ``SystemExit`` and other BaseExceptions (a
module-level ``argparse`` parse, a ``sys.exit`` in a hook): only
KeyboardInterrupt gets through. ``PRISM_STRICT_PLUGINS=1`` re-raises instead
(an exit becomes a PluginError, so the command still fails with one message); the
guarding itself is ``prism.plugin_guard``.

Which plugins load:

- ``PRISM_DISABLE_PLUGIN_AUTOLOAD=1`` skips installed entry points (hermetic tests);
- ``PRISM_LOAD_PLUGINS=a,b`` loads only those installed plugins (by distribution or
  entry-point name; an empty value loads none), and wins over the autoload switch;
- ``PRISM_DISABLED_PLUGINS=a,b`` and ``[plugins] disable = [...]`` in the project's
  prism.toml skip plugins by distribution, entry-point or local name (``local:<stem>``).

``PRISM_TRACE_PLUGINS=1`` prints every plugin load and hook call to stderr.
"""

from __future__ import annotations

import importlib
import importlib.util
import io
import os
import re
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import pluggy

from prism import PROJECT_NAME, __version__, hookspecs
from prism.config.discovery import CONFIG_FILE_NAME, find_config
from prism.config.toml_compat import read_toml_or_none
from prism.errors import PluginError
from prism.plugin_guard import held_output, isolate, strict, timed, trace, truthy
from prism.registry import Registry

ENTRY_POINT_GROUP = "prism_mcit"
KINDS = ("method", "backbone", "benchmark", "metric")


@dataclass
class PluginInfo:
    """What `prism plugins` shows about one plugin."""

    name: str
    provider: str  # "builtin", "dist==version" or "local:<path>"
    source: str = "builtin"  # "builtin", "entry point" or "local"
    distribution: str | None = None
    version: str | None = None
    hooks: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    disabled: str | None = None  # why it was not loaded, when that was asked for

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def status(self) -> str:
        if self.errors:
            return "error"
        return "disabled" if self.disabled else "ok"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "provider": self.provider, "source": self.source,
                "distribution": self.distribution, "version": self.version, "hooks": self.hooks,
                "status": self.status, "disabled": self.disabled, "errors": self.errors, "ok": self.ok}


# -- settings from the environment and prism.toml ------------------------------------------
def normalize(name: str) -> str:
    """PEP 503 normalisation, so ``Prism_LwF`` and ``prism-lwf`` name the same plugin."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _name_list(raw: str) -> set[str]:
    return {normalize(part.strip()) for part in raw.split(",") if part.strip()}


def _env_disabled() -> set[str]:
    return _name_list(os.environ.get("PRISM_DISABLED_PLUGINS", ""))


def _only_loaded() -> set[str] | None:
    """The PRISM_LOAD_PLUGINS allow-list, or None when the variable is not set."""
    raw = os.environ.get("PRISM_LOAD_PLUGINS")
    return None if raw is None else _name_list(raw)


def config_disabled(project_dir: Path | None) -> set[str]:
    """``[plugins] disable`` of the project's prism.toml, read with tomllib alone.

    The plugin manager is built before the configuration is validated (the
    method's parameters need the registry), so only this one table is read here;
    a broken file is left for ``load_config`` to report.
    """
    if project_dir is None:
        return set()
    path = Path(project_dir) / CONFIG_FILE_NAME
    named = find_config(search=False)  # PRISM_CONFIG, when it names a file of this project
    if named is not None and named.path.resolve().parent == Path(project_dir).resolve():
        path = named.path
    document = read_toml_or_none(path)
    if document is None:
        return set()
    table = document.get("plugins", {})
    names = table.get("disable", []) if isinstance(table, dict) else []
    return {normalize(n) for n in names if isinstance(n, str) and n.strip()} if isinstance(names, list) else set()


# -- the manager --------------------------------------------------------------------------
class PluginManager:
    """Loads plugins once and builds the four registries from their hooks."""

    def __init__(self, project_dir: Path | None = None, *, autoload: bool | None = None,
                 extra_plugins: list[tuple[str, Any]] | None = None):
        self.pm = pluggy.PluginManager(PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}
        self._providers: dict[int, PluginInfo] = {}
        self._disabled = _env_disabled()
        self._config_disabled = config_disabled(project_dir)
        only = _only_loaded()
        if autoload is None:
            autoload = only is not None or not truthy("PRISM_DISABLE_PLUGIN_AUTOLOAD")
        builtin = PluginInfo("builtin", "builtin", distribution="prism-mcit", version=__version__)
        self._add(builtin, lambda: importlib.import_module("prism.builtin_plugin"))
        if autoload:
            self._load_entry_points(only)
        if project_dir is not None:
            self._load_local(Path(project_dir) / "plugins")
        for name, obj in extra_plugins or []:
            self._add(PluginInfo(name, f"local:{name}", source="local"), lambda obj=obj: obj)
        self.registries: dict[str, Registry] = {kind: Registry(kind) for kind in KINDS}
        for kind in KINDS:
            self._collect(kind)

    # -- loading -------------------------------------------------------------------------
    def _why_disabled(self, info: PluginInfo) -> str | None:
        names = {normalize(info.name)}
        if info.distribution:
            names.add(normalize(info.distribution))
        if names & self._disabled:
            return "disabled by PRISM_DISABLED_PLUGINS"
        if names & self._config_disabled:
            return "disabled by [plugins] disable in prism.toml"
        return None

    def _add(self, info: PluginInfo, loader: Callable[[], Any], reason: str | None = None) -> None:
        key = info.name
        if key in self.infos:  # two distributions with the same entry-point name
            other = self.infos[key]
            key = f"{info.name} ({info.provider})"
            info.errors.append(f"plugin name {info.name!r} is already used by {other.provider}; "
                               f"not loaded from {info.provider}")
            self.infos[key] = info
            if strict():
                raise PluginError(info.errors[-1])
            return
        self.infos[key] = info
        info.disabled = reason or (None if info.source == "builtin" else self._why_disabled(info))
        if info.disabled:
            trace(f"skip {info.name} ({info.provider}): {info.disabled}")
            return
        held = io.StringIO()
        try:
            with timed(f"load {info.name} ({info.provider})"), held_output() as held:
                plugin = loader()
                self.pm.register(plugin, name=key)
        except KeyboardInterrupt:  # Ctrl-C stops prism, whoever was running
            raise
        except BaseException as exc:  # noqa: BLE001 - an exit at import too: isolation is the point
            isolate(info.errors, f"failed to load {_where(info)}", exc, held.getvalue())
            return
        info.hooks = sorted(caller.name for caller in self.pm.get_hookcallers(plugin) or [])
        self._providers[id(plugin)] = info

    def _load_entry_points(self, only: set[str] | None) -> None:
        # Sorted, so that which of two clashing plugins keeps an id does not depend on
        # the order the file system lists site-packages in.
        found = metadata.entry_points(group=ENTRY_POINT_GROUP)
        for ep in sorted(found, key=lambda ep: (normalize(ep.dist.name) if ep.dist else "", ep.name)):
            name, version = (ep.dist.name, ep.dist.version) if ep.dist is not None else (None, None)
            provider = f"{name}=={version}" if ep.dist is not None else ep.value
            info = PluginInfo(ep.name, provider, source="entry point", distribution=name, version=version)
            reason = None
            if only is not None and not ({normalize(ep.name), normalize(name or "")} & only):
                reason = "not listed in PRISM_LOAD_PLUGINS"
            self._add(info, ep.load, reason)

    def _load_local(self, folder: Path) -> None:
        if not folder.is_dir():
            return
        for path in sorted(folder.glob("*.py")):
            if path.name.startswith("_"):
                continue
            info = PluginInfo(f"local:{path.stem}", f"local:{path}", source="local")
            self._add(info, lambda path=path: _import_file(path))

    # -- registration --------------------------------------------------------------------
    def _collect(self, kind: str) -> None:
        registry = self.registries[kind]
        hook = f"register_{kind}s"
        for impl in getattr(self.pm.hook, hook).get_hookimpls():  # registration order: built-ins first
            info = self._providers.get(id(impl.plugin))
            if info is None:
                continue

            def register(id: str, target: Any, summary: str = "", _info: PluginInfo = info, **extra: Any) -> None:
                try:
                    registry.add(id, target, summary, provider=_info.provider, **extra)
                    trace(f"  {_info.name} registered {kind} {id!r} -> {target!r}")
                except PluginError as exc:  # a clash loses only the clashing id
                    if strict():
                        raise
                    _info.errors.append(str(exc))
                    trace(f"  {_info.name}: {exc}")

            self._call_hook(info, hook, impl.function, register=register)

    def add_commands(self, app: Any, core_names: set[str]) -> None:
        """Let plugins add commands; none may shadow a core command or another plugin's."""
        owners: dict[str, PluginInfo] = {}
        for impl in self.pm.hook.register_commands.get_hookimpls():
            info = self._providers.get(id(impl.plugin))
            if info is None or info.provider == "builtin":
                continue
            before = [*app.registered_commands, *app.registered_groups]
            # what a failing hook added before it failed is still checked against the core commands
            self._call_hook(info, "register_commands", impl.function, app=app)
            for collection in (app.registered_commands, app.registered_groups):
                for item in [i for i in collection if not any(i is b for b in before)]:
                    name = _command_name(item)
                    problem = None
                    if name in core_names:
                        problem = f"command {name!r} shadows a core prism command and was ignored"
                    elif name in owners:
                        problem = (f"command {name!r} is registered twice: by {owners[name].provider} "
                                   f"and by {info.provider}; the second was ignored")
                    if problem is None:
                        owners[name or ""] = info
                        trace(f"  {info.name} added command {name!r}")
                        continue
                    collection.remove(item)
                    info.errors.append(problem)
                    trace(f"  {info.name}: {problem}")
                    if strict():
                        raise PluginError(problem)

    def _call_hook(self, info: PluginInfo, hook: str, function: Callable[..., Any], **kwargs: Any) -> None:
        """Call one plugin's hook; a failure (an exit included) is recorded on the plugin."""
        held = io.StringIO()
        try:
            with timed(f"{hook} of {info.name}"), held_output() as held:
                function(**kwargs)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - a sys.exit in a hook too: isolation is the point
            isolate(info.errors, f"{hook} of {_where(info)} failed", exc, held.getvalue())

    def registry(self, kind: str) -> Registry:
        return self.registries[kind]

    def provided_by(self, info: PluginInfo) -> dict[str, list[str]]:
        """The ids each kind's registry holds from ``info``'s plugin."""
        provided = {kind: [e.id for e in self.registries[kind] if e.provider == info.provider] for kind in KINDS}
        return {kind: ids for kind, ids in provided.items() if ids}


def _where(info: PluginInfo) -> str:
    """The plugin as a user finds it: its name and its file (local) or distribution."""
    provider = info.provider.removeprefix("local:") if info.source == "local" else info.provider
    return info.name if provider in ("", info.name, "builtin") else f"{info.name} ({provider})"


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
