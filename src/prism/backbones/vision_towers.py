"""Vision towers of original-format LLaVA checkpoints: where the folder is, and loading it.

An original LLaVA-1.5 (or InternVL-Chat 1.0) checkpoint names its tower in
``mm_vision_tower``: a local folder or a hub id. The tower is a CLIP ViT, or an
InternViT-6B when ``prism.backbones.intern_vit`` recognises the folder.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from prism.backbones.model_files import read_config_json
from prism.backbones.quiet import quiet_transformers
from prism.errors import CheckpointError, ConfigError


@dataclass
class TowerParts:
    """A vision tower ready to plug in: weights keyed relative to the tower module."""

    kind: str  # "clip", "intern_vit"
    folder: Path
    config: Any
    state_dict: dict[str, Any]
    image_processor: Any


TowerLoader = Callable[[Path], "tuple[Any, dict[str, Any], Any]"]


def _cached_hub_snapshot(repo_id: str) -> Path | None:
    """The local Hugging Face cache's snapshot of ``repo_id``, never a download."""
    if repo_id.count("/") != 1 or repo_id.startswith((".", "/", "~")):
        return None
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=repo_id, local_files_only=True))
    except Exception:  # not cached, malformed id: the caller reports what it tried
        return None


def resolve_vision_tower(name: str | None, checkpoint: Path, override: str | None = None,
                         override_source: str = "[backbone] vision_tower") -> Path:
    """The tower folder: ``override`` if given, else ``mm_vision_tower`` as a local path
    (absolute, or relative to the checkpoint) or a hub id already in the local cache."""
    if override:
        local = Path(override).expanduser()
        found = local if local.is_dir() else _cached_hub_snapshot(override)
        if found is None:
            raise ConfigError(f"{override_source} = {override!r}: no such folder, and not a model in the "
                              "local Hugging Face cache")
        return found.resolve()
    config_path = checkpoint / "config.json"
    if not name:
        raise ConfigError(f"{config_path}: mm_vision_tower is not set; name the CLIP tower folder with "
                          f"{override_source} = PATH")
    local = Path(name).expanduser()
    local = local if local.is_absolute() else checkpoint / local
    found = local if local.is_dir() else _cached_hub_snapshot(name)
    if found is None:
        raise ConfigError(f"{config_path}: mm_vision_tower = {name!r} is neither a folder ({local}) nor in "
                          f"the local Hugging Face cache; set {override_source} = PATH to the tower's folder "
                          f"(or download {name!r} first)")
    return found.resolve()


def load_clip_tower(folder: Path) -> tuple[Any, dict[str, Any], Any]:
    """CLIP ViT tower: (CLIPVisionConfig, weights keyed like ``CLIPVisionModel``, image processor).

    Reads a full ``CLIPModel`` folder (openai/clip-vit-large-patch14-336) as well
    as a ``CLIPVisionModel`` one; the old integer ``size``/``crop_size`` is fine.
    """
    import torch
    from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModel

    config_type = read_config_json(folder / "config.json").get("model_type")
    if config_type not in ("clip", "clip_vision_model"):
        raise ConfigError(f"{folder}/config.json: a {config_type!r} model is not a supported vision tower "
                          "(expected CLIP, e.g. openai/clip-vit-large-patch14-336)")
    if not (folder / "preprocessor_config.json").is_file():
        raise ConfigError(f"{folder}: the vision tower has no preprocessor_config.json")
    with quiet_transformers():
        config = CLIPVisionConfig.from_pretrained(folder)
        try:
            model, info = CLIPVisionModel.from_pretrained(folder, dtype=torch.float32, output_loading_info=True)
        except OSError as exc:
            raise ConfigError(f"{folder}: cannot load the CLIP tower's weights ({exc})") from None
        image_processor = CLIPImageProcessorPil.from_pretrained(folder)
    if info.get("missing_keys"):
        missing = sorted(info["missing_keys"])
        raise CheckpointError(f"{folder}: the CLIP tower's weights lack {len(missing)} tensors "
                              f"(e.g. {missing[0]})")
    return config, model.state_dict(), image_processor


def tower_loaders() -> list[tuple[str, Callable[[Path], bool], TowerLoader]]:
    """(kind, recognises(folder), load(folder)) in the order tried; CLIP is the fallback.

    InternViT comes from ``prism.backbones.intern_vit`` when that module exists.
    """
    loaders: list[tuple[str, Callable[[Path], bool], TowerLoader]] = []
    if importlib.util.find_spec("prism.backbones.intern_vit") is not None:
        module = importlib.import_module("prism.backbones.intern_vit")
        recognise = getattr(module, "is_intern_vit_folder", None)
        load = getattr(module, "load_intern_vit_tower", None)
        if recognise is not None and load is not None:
            loaders.append(("intern_vit", recognise, load))
    loaders.append(("clip", lambda folder: True, load_clip_tower))
    return loaders


def load_vision_tower(folder: Path) -> TowerParts:
    for kind, recognises, load in tower_loaders():
        if recognises(folder):
            config, state_dict, image_processor = load(folder)
            return TowerParts(kind, folder, config, state_dict, image_processor)
    raise ConfigError(f"{folder}: not a vision tower prism can load")  # pragma: no cover - CLIP accepts all
