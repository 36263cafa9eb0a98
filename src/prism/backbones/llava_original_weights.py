"""The weights of an original LLaVA-1.5 folder: which files, read safely, renamed for llava-hf.

Safetensors only: a pickled ``.bin`` shard is refused (named, with the command
that converts it) and nothing is ever unpickled.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

from prism.backbones.model_files import index_shards
from prism.backbones.vision_towers import TowerParts
from prism.errors import CheckpointError, ConfigError

#: where the weights are, in the order they are looked for: safetensors first
WEIGHT_SOURCES = ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json",
                  "pytorch_model.bin")


#: Checkpoint keys that are not weights of the converted model (old rotary buffers, LLaVA-NeXT's newline).
IGNORED_KEYS = re.compile(r"(\.rotary_emb\.inv_freq$|^model\.image_newline$)")


_LANGUAGE = re.compile(r"^model\.(embed_tokens|layers|norm)\.")


_PROJECTOR = {"model.mm_projector.0.": "model.multi_modal_projector.linear_1.",
              "model.mm_projector.2.": "model.multi_modal_projector.linear_2."}


_EMBEDDED_TOWER = "model.vision_tower.vision_tower."


def weight_files(folder: Path) -> list[Path]:
    """The checkpoint's weight files: the shards an index names, or one file (safetensors first)."""
    for name in WEIGHT_SOURCES:
        source = folder / name
        if not source.is_file():
            continue
        if not name.endswith(".index.json"):
            return [source]
        return index_shards(source, CheckpointError)
    raise CheckpointError(f"{folder}: no weights (expected {' or '.join(WEIGHT_SOURCES)})")


def check_weight_files(files: list[Path]) -> None:
    """Refuse what prism will not read, naming the file: a pickled shard (nothing is unpickled),
    a safetensors file that is cut or corrupted."""
    from prism.checkpoint.tensorfile import TensorFileError, looks_like_pickle, read_header

    for file in files:
        if file.suffix != ".safetensors":
            with open(file, "rb") as handle:
                kind = looks_like_pickle(handle.read(8)) or "not safetensors"
            raise CheckpointError(
                f"{file} is a torch .bin shard ({kind}); prism reads safetensors weights only and never "
                "unpickles them",
                hint=f"convert the shards to safetensors once, e.g. python -c \"import glob, torch; "
                     "from safetensors.torch import save_file; s = {}; [s.update(torch.load(f, weights_only=True)) "
                     f"for f in sorted(glob.glob('{file.parent}/pytorch_model*.bin'))]; "
                     f"save_file({{k: v.contiguous() for k, v in s.items()}}, '{file.parent}/model.safetensors')\" "
                     "(model.safetensors is then read instead of the .bin files)")
        try:
            read_header(file)
        except TensorFileError as exc:
            raise CheckpointError(f"{file}: {exc}; the checkpoint's weights do not verify",
                                  hint="download that file again") from None


def read_weights(files: list[Path]) -> dict[str, Any]:
    """All tensors of ``files`` (safetensors only: nothing is unpickled), each checked first."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    check_weight_files(files)
    state: dict[str, Any] = {}
    for file in files:
        try:
            state.update(load_file(file))
        except SafetensorError as exc:
            raise CheckpointError(f"{file}: cannot be read as safetensors ({exc}); the checkpoint's weights do "
                                  "not verify", hint="download that file again") from None
    return state


def map_weight_names(state: dict[str, Any], where: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Original names -> transformers-5 llava names; returns (model weights, embedded tower weights).

    Tower weights a checkpoint carries (``model.vision_tower.vision_tower.*``) come
    back keyed relative to the tower, still in the checkpoint's own naming.
    """
    mapped: dict[str, Any] = {}
    tower: dict[str, Any] = {}
    unknown: list[str] = []
    for key, tensor in state.items():
        if IGNORED_KEYS.search(key):
            continue
        if key.startswith(_EMBEDDED_TOWER):
            tower[key[len(_EMBEDDED_TOWER):]] = tensor
        elif _LANGUAGE.match(key):
            mapped["model.language_model." + key[len("model."):]] = tensor
        elif key == "lm_head.weight":
            mapped[key] = tensor
        elif any(key.startswith(old) for old in _PROJECTOR):
            old = next(old for old in _PROJECTOR if key.startswith(old))
            mapped[_PROJECTOR[old] + key[len(old):]] = tensor
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"{where}: {len(unknown)} weights of unknown purpose (e.g. {sorted(unknown)[0]}); "
                              "not an original LLaVA-1.5 (mlp2x_gelu, Llama) checkpoint")
    return mapped, tower


def embedded_tower_weights(tower: TowerParts, embedded: dict[str, Any], where: Path) -> dict[str, Any]:
    """Tower weights a checkpoint carries, keyed like ``tower.state_dict``.

    InternViT's original names need its own converter; CLIP's differ at most by
    a ``vision_model.`` prefix.
    """
    if tower.kind == "intern_vit":
        convert = getattr(importlib.import_module("prism.backbones.intern_vit"), "convert_intern_vit_weights", None)
        if convert is None:
            raise ConfigError(f"{where}: the checkpoint carries InternViT tower weights and this prism cannot "
                              "convert them")
        return convert(tower.folder, embedded, source=f"{where} ({_EMBEDDED_TOWER}*)")
    return _tower_names(embedded, set(tower.state_dict), where)


def _tower_names(embedded: dict[str, Any], expected: set[str], where: Path) -> dict[str, Any]:
    """Key embedded CLIP weights like the loaded tower (``vision_model.`` dropped where needed)."""
    renamed: dict[str, Any] = {}
    for key, tensor in embedded.items():
        short = key[len("vision_model."):] if key.startswith("vision_model.") else key
        name = key if key in expected else short
        if name not in expected:
            raise CheckpointError(f"{where}: the checkpoint's tower weight {_EMBEDDED_TOWER}{key} does not "
                                  "match the vision tower named by mm_vision_tower")
        renamed[name] = tensor
    return renamed


def grow_rows(weight: Any, rows: int) -> Any:
    """``weight`` with rows appended up to ``rows``, each the mean of the existing rows."""
    import torch

    extra = rows - weight.shape[0]
    if extra <= 0:
        return weight
    mean = weight.float().mean(dim=0, keepdim=True).to(weight.dtype)
    return torch.cat([weight, mean.expand(extra, -1)], dim=0)
