"""The ``internvl`` backbone: InternVL-Chat 1.0 as transformers' own LLaVA class.

InternVL-Chat 1.0 (OpenGVLab/InternVL, ``internvl_chat_llava``) is LLaVA-1.5
with an InternViT-6B tower: a ``LlavaForConditionalGeneration`` whose
``vision_config`` is an ``InternVLVisionConfig``, with the plain two-layer GELU
projector. Loading is the llava backbone's; this class only makes sure the
folder really holds an InternViT tower, so a mistyped ``[backbone] id`` fails
before a 7B model is read instead of training the wrong architecture.
(transformers' ``InternVLForConditionalGeneration`` is the 1.5+ design, with
pixel shuffle and a LayerNorm projector: not this model.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prism.backbones.base import LoadedBackbone
from prism.backbones.intern_vit import is_intern_vit_folder
from prism.backbones.llava import LlavaBackbone, resolve_model_path
from prism.errors import ConfigError

VISION_MODEL_TYPE = "internvl_vision"
_WRONG_TOWER_HINT = 'a LLaVA with a CLIP or SigLIP tower is backbone id "llava"'


def _check_tower_before_loading(folder: Path, model: str, tower_override: str | None) -> None:
    """Reject folders whose config.json names a non-InternViT tower (cheap: reads one JSON file)."""
    try:
        raw = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # the llava loader reports unreadable configs with its own message
    if not isinstance(raw, dict):
        return
    vision = raw.get("vision_config")
    if isinstance(vision, dict):  # llava-hf format
        kind = vision.get("model_type")
        if kind != VISION_MODEL_TYPE:
            raise ConfigError(f"[backbone] model = {model!r}: {folder} holds a LLaVA whose vision tower is "
                              f"{kind!r}, not InternViT ({VISION_MODEL_TYPE!r})", hint=_WRONG_TOWER_HINT)
    elif tower_override or isinstance(raw.get("mm_vision_tower"), str):  # the original LLaVA release format
        tower = tower_override or raw["mm_vision_tower"]
        if not is_intern_vit_folder(tower):
            where = "[backbone] vision_tower" if tower_override else f"{folder}/config.json (mm_vision_tower)"
            raise ConfigError(f"[backbone] model = {model!r}: the vision tower {tower!r} named by {where} "
                              "is not an InternViT-6B tower", hint=_WRONG_TOWER_HINT)


class InternVLBackbone(LlavaBackbone):
    """InternVL-Chat 1.0: llava-hf folders with an ``internvl_vision`` tower, or the original release."""

    id = "internvl"

    def load(self, config: Any, **options: Any) -> LoadedBackbone:
        """``LlavaBackbone.load`` (same options: device, precision, ...) with the tower checked."""
        _check_tower_before_loading(resolve_model_path(config.model), config.model,
                                    getattr(config, "vision_tower", None))
        loaded = super().load(config, **options)
        kind = getattr(loaded.model.config.vision_config, "model_type", None)
        if kind != VISION_MODEL_TYPE:
            raise ConfigError(f"[backbone] model = {config.model!r}: the loaded model's vision tower is "
                              f"{kind!r}, not InternViT ({VISION_MODEL_TYPE!r})", hint=_WRONG_TOWER_HINT)
        return loaded
