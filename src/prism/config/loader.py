"""Resolve the one configuration of a run from defaults, prism.toml, env and the command line.

Precedence, lowest first: schema defaults < the chosen method's ``config_defaults``
< prism.toml < environment < ``--set`` < dedicated flags. Validation is two-phase:
the core schema, then the chosen method's ``Params`` for its ``[method.<id>]``
table. Every problem of both phases is reported in one ``ConfigError``, each
naming where the offending value came from.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from functools import reduce
from pathlib import Path
from typing import Any, Mapping

from pydantic import ValidationError

from prism import __version__
from prism.atomic import write_file_atomic
from prism.config.discovery import CONFIG_FILE_NAME, find_config
from prism.config.layers import (
    Layer,
    Origin,
    deep_merge,
    env_layer,
    file_layer,
    flags_layer,
    method_defaults_layer,
    sets_layer,
)
from prism.config.paths import under
from prism.config.problems import (
    KeyPath,
    config_error,
    source_of,
    validate,
    value_sources,
    without_bad_numbers,
)
from prism.config.schema import MethodConfig, PrismConfig
from prism.config.selection import task_selection
from prism.config.toml_io import dumps
from prism.errors import ConfigError, PrismError
from prism.registry import did_you_mean

__all__ = ["CONFIG_FILE_NAME", "HASH_EXCLUDED", "RESOLVED_FILE_NAME", "ResolvedConfig",
           "discover_config", "load_config"]

RESOLVED_FILE_NAME = "config.resolved.toml"

#: Settings that do not change what a task's checkpoint holds, so they stay out of the run
#: fingerprint (``ResolvedConfig.hash``): which tasks run, where files go, how fast and how
#: often things are logged, saved or evaluated.
HASH_EXCLUDED = ("benchmark.tasks", "infer.batch_size", "infer.precision", "train.log_every",
                 "train.save_every_steps", "train.report_to", "project.name", "project.output_dir",
                 "benchmark.root", "benchmark.max_test_samples", "train.eval_after_each_task",
                 "distributed.nproc", "distributed.gpus", "distributed.master_port", "distributed.nnodes",
                 "distributed.node_rank", "distributed.master_addr", "train.num_workers",
                 "benchmark.verify_images")



@dataclass
class ResolvedConfig:
    """The validated configuration of a run, with the provenance of every value."""

    config: PrismConfig
    method_params: Any  # the chosen method's validated Params; None when validate_method=False
    sources: dict[str, str]
    config_path: Path | None
    project_dir: Path
    method_class: type | None = field(default=None, repr=False)
    #: the precedence layers, kept so that later checks name a value's source as precisely as the loader
    layers: list[Layer] = field(default_factory=list, repr=False)
    #: settings the run checks could not verify without a download ("[backbone] model: hub id ...")
    unchecked: list[str] = field(default_factory=list)

    @property
    def method_id(self) -> str:
        return self.config.method.id

    @property
    def output_dir(self) -> Path:
        """``project.output_dir``, absolute (relative paths are under the project dir)."""
        return under(self.project_dir, self.config.project.output_dir)

    @property
    def data_root(self) -> Path:
        """``benchmark.root``, absolute (relative paths are under the project dir)."""
        return under(self.project_dir, self.config.benchmark.root)

    def where(self, path: KeyPath | str) -> str:
        """Where the value at ``path`` came from, as errors name it ("prism.toml:12",
        "--set train.lr=abc", "env PRISM_METHOD", "default")."""
        keys = tuple(path.split(".")) if isinstance(path, str) else tuple(path)
        if self.layers:
            return source_of(keys, self.layers)
        for end in range(len(keys), 0, -1):
            label = self.sources.get(".".join(keys[:end]))
            if label is not None:
                return label
        return "default"

    def task_indices(self, task_names: list[str]) -> list[int]:
        """The benchmark task indices ``benchmark.tasks`` selects, in run order."""
        return task_selection(self.config.benchmark.tasks, task_names)

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain data, method params under ``method.<id>``."""
        return self.config.model_dump(mode="json")

    def to_toml(self) -> str:
        """The resolved config as a prism.toml that ``load_config`` accepts back."""
        where = str(self.config_path) if self.config_path else "built-in defaults"
        header = (f"Resolved by prism {__version__} from {where}.\n"
                  f"Run fingerprint (config_hash in each checkpoint's prism_state.json): {self.hash()}")
        return dumps(self.to_dict(), header=header)

    def hash(self) -> str:
        """The run fingerprint: sha256 (hex) over what changes a task's checkpoint.

        The one definition: config.resolved.toml shows it, every checkpoint's prism_state.json
        records it, and a rerun continues only from checkpoints that carry it. Settings in
        ``HASH_EXCLUDED`` and unset (None) ones are left out, so a newer prism that adds an
        optional setting still recognises the checkpoints of an older run.
        """
        data = self.to_dict()
        for dotted in HASH_EXCLUDED:
            table, key = dotted.split(".")
            data.get(table, {}).pop(key, None)
        canonical = json.dumps(_without_none(data), sort_keys=True, default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()

    def save(self, folder: Path | str) -> Path:
        """Write ``config.resolved.toml`` into ``folder`` atomically; returns its path."""
        path = Path(folder) / RESOLVED_FILE_NAME
        write_file_atomic(path, self.to_toml())
        return path


def _without_none(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _without_none(v) for k, v in obj.items() if v is not None}
    return obj


def discover_config(config_path: Path | str | None = None, *, cwd: Path | None = None,
                    env: Mapping[str, str] | None = None) -> Path | None:
    """The config file to use: explicit path, else ``PRISM_CONFIG``, else the nearest prism.toml upwards."""
    found = find_config(config_path, cwd=cwd, env=env)
    if found is None or found.named_by is None:
        return None if found is None else found.path
    if not found.path.is_file():
        raise ConfigError(f"{found.named_by} not found: {found.path}",
                          hint="`prism init` writes an annotated prism.toml")
    return found.path.resolve()


def load_config(config_path: Path | None = None, *, cwd: Path | None = None,
                env: Mapping[str, str] | None = None, sets: list[str] | None = None,
                flags: dict[str, Any] | None = None, validate_method: bool = True,
                check_run: bool = False) -> ResolvedConfig:
    """Resolve, validate and trace the configuration (see the module docstring).

    ``flags`` maps dotted keys to the values of dedicated CLI flags (None = not given).
    ``validate_method=False`` skips phase two, for showing a config whose method
    plugin is broken or not installed. ``check_run=True`` also runs the run checks
    (on the tables that are valid, when others are not) and reports their problems
    in the same error.
    """
    env = os.environ if env is None else env
    cwd = (cwd or Path.cwd()).resolve()
    path = discover_config(config_path, cwd=cwd, env=env)
    project_dir = path.parent if path is not None else cwd

    problems: list[str] = []
    layers: list[Layer] = [file_layer(path)] if path is not None else []
    env_given, env_problems = env_layer(env)
    sets_given, set_problems = sets_layer(list(sets or []))
    layers += [env_given, sets_given, flags_layer(flags or {})]
    problems += env_problems + set_problems

    method_id, id_origin = _given_method_id(layers)
    registry = _method_registry(project_dir, validate_method)
    method_class = _method_class(registry, method_id, id_origin, validate_method, problems)
    if method_class is not None:
        defaults = getattr(method_class, "config_defaults", None) or {}
        layers.insert(0, method_defaults_layer(method_id, defaults))

    merged: dict[str, Any] = reduce(deep_merge, (layer.data for layer in layers), {})
    merged = without_bad_numbers(merged, (), layers, problems)
    config = validate(PrismConfig, merged, (), layers, problems)
    params = None
    method_tables = merged.get("method") if isinstance(merged.get("method"), dict) else {}
    if validate_method and registry is not None:
        _check_method_tables(method_tables, registry.ids(), layers, problems)
        if method_class is not None:
            table = method_tables.get(method_id, {})
            params = validate(method_class.Params, table if isinstance(table, dict) else {},
                               ("method", method_id), layers, problems)
    unchecked: list[str] = []
    if check_run:
        from prism.config.run_checks import run_problems

        checked, invalid = (config, set()) if config is not None else _valid_tables(merged)
        problems += run_problems(checked, params, project_dir, lambda keys: source_of(keys, layers),
                                 skip=invalid, unchecked=unchecked)
    if problems or config is None:
        raise config_error(problems)

    if params is not None:
        config.method = MethodConfig.model_validate(
            {"id": method_id, method_id: params.model_dump(mode="json")})
    sources = value_sources(config, layers)
    return ResolvedConfig(config=config, method_params=params, sources=sources, config_path=path,
                          project_dir=project_dir, method_class=method_class, layers=layers,
                          unchecked=unchecked)


def _valid_tables(merged: dict[str, Any]) -> tuple[PrismConfig, set[str]]:
    """A config of the tables that validate on their own (defaults for the others), and the names
    of the others: the run checks still look at what is valid, so one error lists everything."""
    tables: dict[str, Any] = {}
    invalid: set[str] = set()
    for name, info in PrismConfig.model_fields.items():
        model = info.annotation
        try:
            tables[name] = model.model_validate(merged.get(name, {}))
        except ValidationError:
            tables[name] = model()
            invalid.add(name)
    return PrismConfig.model_construct(**tables), invalid


# -- the method --------------------------------------------------------------------------
def _given_method_id(layers: list[Layer]) -> tuple[str, Origin | None]:
    for layer in reversed(layers):
        found, value = layer.get(("method", "id"))
        if found:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                value = str(value)  # `method.id = 3`: the schema reads it as the text "3", so look that up
            return value, layer.origin_of(("method", "id"))
    return MethodConfig.model_fields["id"].default, None


def _method_registry(project_dir: Path, validate_method: bool):
    from prism import plugins  # looked up at call time so tests can substitute a registry

    try:
        return plugins.registry("method", project_dir)
    except PrismError:
        if validate_method:
            raise
        return None


def _method_class(registry, method_id: Any, origin: Origin | None, validate_method: bool,
                  problems: list[str]) -> type | None:
    """The chosen method's class (imported), or None when it cannot be known."""
    if registry is None or not isinstance(method_id, str) or not method_id:
        return None  # a non-text id is reported by the core schema
    if method_id not in registry:
        if validate_method:
            known = ", ".join(registry.ids()) or "none"
            problems.append(
                f"{origin.detail if origin else 'default'}: [method] id: unknown method "
                f"{method_id!r}{did_you_mean(method_id, registry.ids())}; registered: {known}"
            )
        return None
    try:
        return registry.entry(method_id).load()
    except PrismError:
        if validate_method:
            raise
        return None


def _check_method_tables(method: Any, known: list[str], layers: list[Layer],
                         problems: list[str]) -> None:
    if not isinstance(method, dict):
        return
    for name, value in method.items():
        if name == "id" or not isinstance(value, dict) or name in known:
            continue
        path = ("method", name)
        problems.append(
            f"{source_of(path, layers)}: [method.{name}]: unknown method table"
            f"{did_you_mean(name, known)}; registered methods: {', '.join(known) or 'none'}"
        )




