"""The DeepSpeed config of a run: a shipped preset, the user's JSON file, or one built from
``[distributed] zero_stage`` / ``offload``; then the values prism's own step loop owns.

prism keeps its step loop (token-weighted loss, its own AdamW and LR schedule) on every
backend, so the DeepSpeed keys that describe that loop are ``"auto"`` in the presets and
filled here for each task: micro batch and accumulation from ``[train]`` (``batch_geometry``),
clipping from ``[train] max_grad_norm``, fp16/bf16 from ``[backbone] train_precision``, and
the bucket sizes from the language model's hidden size (accelerate would look for
``config.hidden_size``, which a LLaVA config does not have). An explicit value in a user's
file must agree with prism's. ``train_batch_size`` is left to DeepSpeed (micro batch x
accumulation x processes), and ``optimizer``/``scheduler`` sections are refused: without them
DeepSpeed never builds its fused or CPU Adam extensions.

Nothing here imports deepspeed: the launcher checks the config before it starts torchrun.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

from prism.errors import ConfigError
from prism.jsonfile import JsonProblem, read_json
from prism.registry import did_you_mean

KEY = "[distributed] deepspeed_config"
#: shipped presets: name -> file in prism/config/deepspeed/
PRESETS = {"zero2": "zero2.json", "zero3": "zero3.json", "zero3_offload": "zero3_offload.json"}
STAGES = (2, 3)
#: keys accelerate would otherwise fill with "auto" from the model's config.hidden_size
HIDDEN_SIZE_KEYS = {
    "reduce_bucket_size": lambda h: h * h,
    "stage3_prefetch_bucket_size": lambda h: int(0.9 * h * h),
    "stage3_param_persistence_threshold": lambda h: 10 * h,
}
#: DeepSpeed prints a line every steps_per_print steps; prism logs its own metrics
QUIET_STEPS = 2**31 - 1


@dataclass
class DeepSpeedSettings:
    """The DeepSpeed config as the user chose it ("auto" values intact) and where it came from."""

    config: dict[str, Any]
    source: str  # "preset zero3", "file /abs/ds.json", "zero_stage = 2, offload = false"

    @property
    def zero_stage(self) -> int:
        return int(self.config["zero_optimization"]["stage"])

    @property
    def offload(self) -> bool:
        return _offloads(self.config)


def preset_config(name: str) -> dict[str, Any]:
    """A shipped preset (a fresh copy)."""
    if name not in PRESETS:
        raise ConfigError(f"{KEY}: unknown preset {name!r}{did_you_mean(name, list(PRESETS))}",
                          hint="choose " + ", ".join(PRESETS) + ", or give the path of a DeepSpeed JSON file")
    text = resources.files("prism.config").joinpath("deepspeed", PRESETS[name]).read_text(encoding="utf-8")
    return json.loads(text)


def built_config(zero_stage: int, offload: bool) -> dict[str, Any]:
    """The config ``zero_stage`` / ``offload`` describe: the zero2/zero3 preset, plus CPU offload."""
    config = preset_config(f"zero{zero_stage}")
    if offload:
        zero = config["zero_optimization"]
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        if zero_stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
        config["zero_force_ds_cpu_optimizer"] = False
    return config


def load_deepspeed_config(distributed: Any, project_dir: Path,
                          sources: Mapping[str, str] | None = None) -> DeepSpeedSettings:
    """The run's DeepSpeed config from ``[distributed]``, checked.

    ``sources`` (key -> where its value came from, "default" when not given) lets a
    ``zero_stage`` or ``offload`` the user gave explicitly be compared with the file's.
    """
    name = distributed.deepspeed_config
    if name is None:
        settings = DeepSpeedSettings(built_config(distributed.zero_stage, distributed.offload),
                                     f"zero_stage = {distributed.zero_stage}, "
                                     f"offload = {str(distributed.offload).lower()}")
    elif name in PRESETS:
        settings = DeepSpeedSettings(preset_config(name), f"preset {name}")
    else:
        path = Path(name).expanduser()
        path = path if path.is_absolute() else Path(project_dir) / path
        if not path.is_file() and path.suffix.lower() != ".json" and "/" not in name and "\\" not in name:
            preset_config(name)  # a mistyped preset name: say so, with the close one
        settings = DeepSpeedSettings(_read_json(path, name), f"file {path}")
    check_config(settings.config, where=settings.source)
    _check_given(settings, distributed, sources or {})
    return settings


def _read_json(path: Path, name: str) -> dict[str, Any]:
    def error(problem: JsonProblem) -> ConfigError:
        cause = problem.cause
        if problem.kind in ("missing", "unreadable"):
            return ConfigError(f"{KEY} = {name!r}: cannot read {path} ({getattr(cause, 'strerror', None) or cause})",
                               hint="give a DeepSpeed JSON file (relative to the project folder) or a preset: "
                                    + ", ".join(PRESETS))
        if problem.kind == "not_object":
            return ConfigError(f"{KEY}: {path} holds a JSON {problem.found}, not an object")
        where = (f"line {cause.lineno}, column {cause.colno}: {cause.msg}" if isinstance(cause, json.JSONDecodeError)
                 else "not UTF-8 text" if problem.kind == "not_utf8" else str(cause))
        return ConfigError(f"{KEY}: {path} is not valid JSON ({where})",
                           hint="DeepSpeed configs are plain JSON: no comments, no trailing commas")

    return read_json(path, want_object=True, error=error)


def check_config(config: dict[str, Any], *, where: str) -> None:
    """What prism needs from any DeepSpeed config (preset or file)."""
    zero = config.get("zero_optimization")
    if not isinstance(zero, dict) or "stage" not in zero:
        raise ConfigError(f"{KEY} ({where}): no zero_optimization.stage",
                          hint='add "zero_optimization": {"stage": 2} (or 3), or use a preset: zero2, zero3')
    if zero["stage"] not in STAGES:
        raise ConfigError(f"{KEY} ({where}): zero_optimization.stage = {zero['stage']!r}; prism runs ZeRO "
                          "stages 2 and 3", hint='set "stage": 2 or 3, or use backend = "ddp"')
    for section, owner in (("optimizer", "[train] lr / weight_decay (prism's AdamW)"),
                           ("scheduler", "[train] lr_scheduler / warmup_ratio")):
        if section in config:
            raise ConfigError(f"{KEY} ({where}): has an {section!r} section; prism's step loop keeps its own, "
                              f"set by {owner}", hint=f"remove the {section!r} section from the file")


def _check_given(settings: DeepSpeedSettings, distributed: Any, sources: Mapping[str, str]) -> None:
    """A deepspeed_config decides stage and offload. ``zero_stage``/``offload`` set to something
    other than their defaults must agree with it (``prism init`` writes the defaults out, so a
    default value is no conflict: the file wins)."""
    if distributed.deepspeed_config is None:
        return
    defaults = type(distributed).model_fields
    for key, mine, theirs in (("zero_stage", distributed.zero_stage, settings.zero_stage),
                              ("offload", distributed.offload, settings.offload)):
        origin = sources.get(f"distributed.{key}", "given")
        if mine != defaults[key].default and mine != theirs:
            raise ConfigError(
                f"[distributed] {key} = {json.dumps(mine)} ({origin}) disagrees with {KEY} "
                f"({settings.source}: {key} {json.dumps(theirs)})",
                hint=f"remove [distributed] {key} (the DeepSpeed config decides), or change the file")


def _offloads(config: dict[str, Any]) -> bool:
    zero = config.get("zero_optimization", {})
    return any(str((zero.get(part) or {}).get("device", "none")).lower() not in ("none", "")
               for part in ("offload_optimizer", "offload_param"))


def task_config(config: dict[str, Any], *, micro_batch: int, accumulation: int, processes: int,
                max_grad_norm: float | None, precision: str, hidden_size: int | None) -> dict[str, Any]:
    """``config`` with every value prism owns filled in for one task; explicit ones checked.

    ``precision`` is accelerate's name ("no", "bf16", "fp16"); ``hidden_size`` is the
    language model's (None: leave the bucket sizes as they are).
    """
    out = copy.deepcopy(config)
    global_batch = micro_batch * accumulation * processes
    geometry = (f"[train] gives {micro_batch} samples per process x {accumulation} accumulation steps x "
                f"{processes} processes = global batch {global_batch}")
    _fill(out, "train_micro_batch_size_per_gpu", micro_batch, geometry)
    _fill(out, "gradient_accumulation_steps", accumulation, geometry)
    _fill(out, "train_batch_size", global_batch, geometry, keep_absent=True)
    clipping = float(max_grad_norm or 0.0)
    _fill(out, "gradient_clipping", clipping, f"[train] max_grad_norm = {max_grad_norm}")
    for dtype in ("bf16", "fp16"):
        section = out.setdefault(dtype, {})
        _fill(section, "enabled", precision == dtype, f"[backbone] train_precision gives {precision!r}",
              label=f"{dtype}.enabled")
    zero = out["zero_optimization"]
    if hidden_size is not None:
        for key, size in HIDDEN_SIZE_KEYS.items():
            if zero.get(key) == "auto":
                zero[key] = size(hidden_size)
    if zero.get("stage3_gather_16bit_weights_on_model_save") == "auto":
        zero["stage3_gather_16bit_weights_on_model_save"] = False
    autos = _autos(out)
    if autos:
        raise ConfigError(f"{KEY}: prism cannot fill {', '.join(autos)} = \"auto\"",
                          hint="replace these \"auto\" values with numbers in the DeepSpeed config")
    # prism's own torch AdamW: DeepSpeed must accept it, also when optimizer states are offloaded
    out["zero_allow_untested_optimizer"] = True
    if _offloads(out):
        out.setdefault("zero_force_ds_cpu_optimizer", False)
    out["steps_per_print"] = QUIET_STEPS
    return out


def _fill(section: dict[str, Any], key: str, value: Any, why: str, *, keep_absent: bool = False,
          label: str | None = None) -> None:
    current = section.get(key, "auto" if not keep_absent else None)
    if current is None:
        return
    if current == "auto":
        section[key] = value
    elif not _same(current, value):
        raise ConfigError(f"{KEY}: {label or key} = {json.dumps(current)}, but {why}",
                          hint=f'set {label or key} to "auto" in the DeepSpeed config (prism fills it)')


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return str(a).lower() == str(b).lower()
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b))
    return a == b


def _autos(config: Any, prefix: str = "") -> list[str]:
    if isinstance(config, dict):
        return [key for k, v in config.items() for key in _autos(v, f"{prefix}{k}.")]
    return [prefix[:-1]] if config == "auto" else []


def text_hidden_size(model: Any) -> int | None:
    """The language model's hidden size (what DeepSpeed's bucket sizes scale with)."""
    config = getattr(model, "config", None)
    if config is None:
        return None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    size = getattr(text, "hidden_size", None)
    return int(size) if size else None


def recordable(config: dict[str, Any]) -> dict[str, Any]:
    """The config as plain JSON (non-finite numbers, which JSON cannot hold, become null)."""
    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, float) and not math.isfinite(value):
            return None
        return value

    return clean(config)
