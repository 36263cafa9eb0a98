"""Adapters on disk in PEFT's format: ``adapter_model.safetensors`` + ``adapter_config.json``.

One saved slot and no routers gives exactly what peft writes for a plain LoRA (keys
``base_model.model.<path>.lora_A.weight``, a ``LoraConfig`` dict), so stock
``peft.PeftModel.from_pretrained`` loads it. Several slots keep the slot name in the
key (``....lora_A.<slot>.weight``) and routers sit under ``....routers.<name>.<param>``;
such a checkpoint is prism's own (its ``adapter_config.json`` describes the targets and
the first slot). Prism's facts (slots, ranks, mixes) are returned to the caller and also
embedded in the safetensors header (``__metadata__["prism"]``, which peft ignores), so a
folder can be read without its ``prism_state.json``.

peft is imported only inside ``save_adapters`` (it costs seconds to import).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterable

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from prism.adapters.adapter_set import AdapterSet, slot_list
from prism.adapters.inject import base_module_paths
from prism.adapters.layers import LoRALinear, SlotSpec
from prism.errors import CheckpointError

ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
ADAPTER_CONFIG_NAME = "adapter_config.json"
PEFT_PREFIX = "base_model.model."
META_KEY = "prism"
FORMAT = "prism-adapters"
FORMAT_VERSION = 1

_SLOT_KEY = re.compile(r"(?P<path>.+)\.lora_(?P<ab>[AB])\.(?P<slot>[^.]+)\.weight")
_PEFT_KEY = re.compile(re.escape(PEFT_PREFIX) + r"(?P<path>.+)\.lora_(?P<ab>[AB])\.weight")


def save_adapters(
    adapter_set: AdapterSet,
    folder: str | Path,
    *,
    base_model_name_or_path: str | None = None,
    slots: Iterable[str] | None = None,
    routers: bool | Iterable[str] = True,
) -> dict[str, Any]:
    """Write the adapters of ``slots`` (all by default) and routers into ``folder``.

    Returns prism's description of what was saved (layout, slots with ranks, routers,
    mixes) for the caller to keep in ``prism_state.json``.
    """
    names = adapter_set.slots if slots is None else slot_list(slots)
    if not names:
        raise ValueError("there are no adapter slots to save")
    routers = routers if isinstance(routers, bool) else list(routers)
    slot_state = adapter_set.state_dict(names, routers=False)
    router_state = adapter_set.state_dict([], routers=routers)
    layout = "peft" if len(names) == 1 and not router_state else "multi-slot"
    if layout == "peft":
        tensors = {PEFT_PREFIX + _drop_slot(key, names[0]): t for key, t in slot_state.items()}
    else:
        tensors = {PEFT_PREFIX + key: t for key, t in {**slot_state, **router_state}.items()}
    paths = {path for slot in names for path in adapter_set.slot_layers(slot)}
    target_modules = peft_target_modules(adapter_set, paths)

    described = adapter_set.describe()
    meta: dict[str, Any] = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "layout": layout,
        "base_model_name_or_path": base_model_name_or_path,
        "target_modules": target_modules,
        "slots": {name: described["slots"][name] for name in names},
        "routers": {
            name: info for name, info in described["routers"].items()
            if routers is True or (not isinstance(routers, bool) and name in routers)
        },
        "mix": described["mix"],
    }
    config = peft_config_dict(adapter_set, names[0], target_modules, base_model_name_or_path)

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(
        {key: t.detach().to("cpu").contiguous() for key, t in tensors.items()},
        str(folder / ADAPTER_WEIGHTS_NAME),
        metadata={"format": "pt", META_KEY: json.dumps(meta, sort_keys=True)},
    )
    (folder / ADAPTER_CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return meta


def load_adapters(
    adapter_set: AdapterSet,
    folder: str | Path,
    *,
    slots: Iterable[str] | None = None,
    strict: bool = True,
) -> list[str]:
    """Load a folder written by ``save_adapters`` or by peft (plain LoRA) into ``adapter_set``.

    Slots missing from the layers are created (rank from the tensors, alpha/dropout from
    prism's metadata or the peft config); routers must exist already. A single-slot (peft)
    checkpoint loads into ``slots[0]`` (default: its saved slot name, else "default"); a
    multi-slot one loads ``slots`` (default: all of them). Returns the loaded slot names.
    """
    folder = Path(folder)
    tensors, meta = _read_weights(folder)
    config = read_adapter_config(folder)
    _check_plain_lora(config, folder)
    wanted = None if slots is None else slot_list(slots)

    state: dict[str, Tensor] = {}
    file_keys: dict[str, str] = {}  # model key -> key in the file, for messages
    if meta is None or meta.get("layout") == "peft":
        if wanted is not None and len(wanted) != 1:
            raise ValueError(f"{folder} holds one LoRA; give one slot name to load it into, not {wanted}")
        slot = wanted[0] if wanted else (next(iter(meta["slots"])) if meta else "default")
        for key, tensor in tensors.items():
            match = _PEFT_KEY.fullmatch(key)
            if match is None:
                raise CheckpointError(
                    f"{key!r} in {folder / ADAPTER_WEIGHTS_NAME} is not a plain LoRA weight",
                    hint="prism reads lora_A/lora_B weights only (no DoRA, biases, modules_to_save, embeddings)",
                )
            state[f"{match['path']}.lora_{match['ab']}.{slot}.weight"] = tensor
            file_keys[f"{match['path']}.lora_{match['ab']}.{slot}.weight"] = key
        loaded = [slot]
    else:
        for key, tensor in tensors.items():
            if not key.startswith(PEFT_PREFIX):
                raise CheckpointError(f"unexpected key {key!r} in {folder / ADAPTER_WEIGHTS_NAME}")
            state[key[len(PEFT_PREFIX):]] = tensor
            file_keys[key[len(PEFT_PREFIX):]] = key
        in_file = list(dict.fromkeys(m["slot"] for k in state if (m := _SLOT_KEY.fullmatch(k))))
        missing = [s for s in wanted or [] if s not in in_file]
        if missing:
            raise CheckpointError(f"slot(s) {missing} are not in {folder}; it holds {in_file}")
        loaded = in_file if wanted is None else wanted
        state = {k: t for k, t in state.items()
                 if (m := _SLOT_KEY.fullmatch(k)) is None or m["slot"] in loaded}

    router_names = _create_missing(adapter_set, state, file_keys, meta, config)
    adapter_set.load_state_dict(state, strict=strict, slots=loaded, routers=router_names)
    return loaded


def read_adapter_meta(folder: str | Path) -> dict[str, Any] | None:
    """prism's description embedded in the weights file (None for a folder peft wrote)."""
    path = Path(folder) / ADAPTER_WEIGHTS_NAME
    if not path.is_file():
        raise CheckpointError(f"no {ADAPTER_WEIGHTS_NAME} in {folder}")
    with safe_open(str(path), framework="pt") as handle:
        raw = (handle.metadata() or {}).get(META_KEY)
    return None if raw is None else json.loads(raw)


def read_adapter_config(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / ADAPTER_CONFIG_NAME
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc


# -- what peft must target -----------------------------------------------------------------------
def peft_targets(target_modules: str | list[str], module_paths: Iterable[str]) -> set[str]:
    """The module paths peft's ``target_modules`` selects: a string is ``re.fullmatch``-ed
    against the path; a list entry matches the path or a dotted suffix of it."""
    if isinstance(target_modules, str):
        pattern = re.compile(target_modules)
        return {p for p in module_paths if pattern.fullmatch(p)}
    names = set(target_modules)
    return {p for p in module_paths if p in names or any(p.endswith("." + n) for n in names)}


def peft_target_modules(adapter_set: AdapterSet, paths: set[str]) -> str | list[str]:
    """The most readable ``target_modules`` that makes peft wrap exactly ``paths``.

    Tried in order: the regex the adapters were injected with, the layer names
    (``["q_proj", "v_proj"]``), the full paths; each is checked against the model's modules
    with peft's matching rule, and an exact alternation of the paths is the last resort.
    """
    modules = [p for p, _ in base_module_paths(adapter_set.model) if p]
    candidates: list[str | list[str]] = list(adapter_set.targets)
    candidates.append(sorted({p.rpartition(".")[2] for p in paths}))
    candidates.append(sorted(paths))
    for candidate in candidates:
        if peft_targets(candidate, modules) == paths:
            return candidate
    return "(?:" + "|".join(re.escape(p) for p in sorted(paths)) + ")"


def peft_config_dict(
    adapter_set: AdapterSet,
    slot: str,
    target_modules: str | list[str],
    base_model_name_or_path: str | None,
) -> dict[str, Any]:
    """A ``peft.LoraConfig`` dict for ``slot`` (per-layer ranks/alphas as exact-path patterns)."""
    from peft import LoraConfig  # slow import: only when saving

    specs = {p: layer.specs[slot] for p, layer in adapter_set.layers.items() if slot in layer.specs}
    common = adapter_set.describe()["slots"][slot]
    rank_pattern = {re.escape(p): s.r for p, s in specs.items() if s.r != common["r"]}
    alpha_pattern = {re.escape(p): _number(s.alpha) for p, s in specs.items() if s.alpha != common["alpha"]}
    config = LoraConfig(
        r=common["r"],
        lora_alpha=_number(common["alpha"]),
        lora_dropout=common["dropout"],
        use_rslora=common["use_rslora"],
        target_modules=target_modules,
        rank_pattern=rank_pattern,
        alpha_pattern=alpha_pattern,
        bias="none",
        fan_in_fan_out=False,
        task_type=None,
        inference_mode=True,
        base_model_name_or_path=base_model_name_or_path,
    )
    data = config.to_dict()
    for key, value in data.items():
        if isinstance(value, set):
            data[key] = sorted(value)
    return json.loads(json.dumps(data, default=str))


# -- internals -----------------------------------------------------------------------------------
def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else float(value)


def _drop_slot(key: str, slot: str) -> str:
    for ab in ("A", "B"):
        suffix = f".lora_{ab}.{slot}.weight"
        if key.endswith(suffix):
            return key[: -len(suffix)] + f".lora_{ab}.weight"
    raise AssertionError(f"not a slot weight: {key}")


def _read_weights(folder: Path) -> tuple[dict[str, Tensor], dict[str, Any] | None]:
    path = folder / ADAPTER_WEIGHTS_NAME
    if not path.is_file():
        hint = (
            "prism reads safetensors only (nothing is unpickled); re-save the adapter with "
            "safe_serialization=True" if (folder / "adapter_model.bin").is_file() else None
        )
        raise CheckpointError(f"no {ADAPTER_WEIGHTS_NAME} in {folder}", hint=hint)
    with safe_open(str(path), framework="pt") as handle:
        raw = (handle.metadata() or {}).get(META_KEY)
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    return tensors, None if raw is None else json.loads(raw)


def _check_plain_lora(config: dict[str, Any], folder: Path) -> None:
    """Refuse peft configs whose weights mean something else than plain LoRA."""
    problems = []
    if config.get("peft_type", "LORA") != "LORA":
        problems.append(f"peft_type is {config['peft_type']!r}")
    for flag in ("use_dora", "fan_in_fan_out", "lora_bias", "use_qalora"):
        if config.get(flag):
            problems.append(f"{flag} is set")
    if config.get("bias", "none") != "none":
        problems.append(f"bias is {config['bias']!r}")
    for field in ("modules_to_save", "layer_replication", "target_parameters", "trainable_token_indices"):
        if config.get(field):
            problems.append(f"{field} is set")
    if problems:
        raise CheckpointError(
            f"{folder / ADAPTER_CONFIG_NAME} is not a plain LoRA adapter: " + "; ".join(problems),
            hint="prism loads plain LoRA (lora_A/lora_B) adapters only",
        )


def _alpha_from_config(config: dict[str, Any], path: str) -> float:
    for pattern, alpha in (config.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", path):  # peft's pattern rule
            return float(alpha)
    return float(config.get("lora_alpha", 8))


def _router_owner(adapter_set: AdapterSet, key: str) -> tuple[str, str] | None:
    """(layer path, router name) of a ``<path>.routers.<name>.<param>`` key, or None."""
    start = 0
    while (index := key.find(".routers.", start)) >= 0:
        if key[:index] in adapter_set.layers:
            return key[:index], key[index + len(".routers."):].split(".", 1)[0]
        start = index + 1
    return None


def _create_missing(
    adapter_set: AdapterSet,
    state: dict[str, Tensor],
    file_keys: dict[str, str],
    meta: dict[str, Any] | None,
    config: dict[str, Any],
) -> set[str]:
    """Create slots the checkpoint has and the layers lack; return the router names it holds."""
    routers: set[str] = set()
    generator = torch.Generator().manual_seed(0)  # the values are overwritten by the load
    for key, tensor in state.items():
        match = _SLOT_KEY.fullmatch(key)
        owner = None if match else _router_owner(adapter_set, key)
        layer_path = match["path"] if match else (owner[0] if owner else None)
        layer: LoRALinear | None = adapter_set.layers.get(layer_path) if layer_path else None
        if layer is None:
            raise CheckpointError(
                f"checkpoint key {file_keys[key]!r} targets a module without an adapter layer",
                hint="inject adapters on that module (target_modules) before loading",
            )
        if owner is not None:
            routers.add(owner[1])
            if owner[1] not in layer.routers:
                raise CheckpointError(
                    f"checkpoint key {file_keys[key]!r} belongs to router {owner[1]!r}, which "
                    f"{layer_path} does not have",
                    hint="create the router (AdapterSet.set_router / add_router) before loading",
                )
            continue
        slot = match["slot"]
        if match["ab"] != "A" or slot in layer.specs:
            continue
        if meta is not None and slot in meta.get("slots", {}):
            info = meta["slots"][slot]
            alpha = info.get("alpha_pattern", {}).get(layer_path, info["alpha"])
            spec = SlotSpec(int(tensor.shape[0]), float(alpha), float(info.get("dropout", 0.0)),
                            bool(info.get("use_rslora", False)))
        else:
            spec = SlotSpec(int(tensor.shape[0]), _alpha_from_config(config, layer_path),
                            float(config.get("lora_dropout", 0.0)), bool(config.get("use_rslora", False)))
        layer.add_slot(slot, spec, generator=generator)
    return routers
