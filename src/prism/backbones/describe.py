"""What ``prism backbones show ID`` reports: what a backbone loads and what this machine can run.

Everything here is read from the backbone class, the shipped assets and the
installed packages; no model is loaded.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

from prism.backbones.base import TARGET_PRESETS
from prism.backbones.llava import ATTN_CHOICES, BUILTIN_PREFIX, assets_dir
from prism.backbones.precision import DESCRIPTIONS, available_precisions, compute_device

def available_attention(device: Any) -> dict[str, str | None]:
    """Every ``[backbone] attn`` value → None when usable on ``device``, else why not
    ("auto" → None too; :func:`auto_attention` says what it picks)."""
    from prism.backbones.llava import flash_attention_usable

    flash = flash_attention_usable("bf16")
    return {name: (flash if name == "flash_attention_2" else None) for name in ATTN_CHOICES}


def auto_attention(device: Any) -> str:
    """What ``attn = "auto"`` becomes on ``device``."""
    from prism.backbones.llava import attn_implementation

    return attn_implementation("auto", device, "bf16")


def builtin_models() -> list[dict[str, str]]:
    """The ``builtin:<name>`` LLaVA-class models shipped with prism, with their vision tower type."""
    found = []
    root = assets_dir()
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        try:
            config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(config, dict) and config.get("model_type") == "llava":
            vision = (config.get("vision_config") or {}).get("model_type", "?")
            found.append({"model": BUILTIN_PREFIX + folder.name, "vision_tower": vision})
    return found


def _doc(obj: Any) -> str:
    """The first paragraph of a docstring, on one line."""
    text = inspect.getdoc(obj) or ""
    return " ".join(text.split("\n\n")[0].split()).replace("``", "")


def describe_backbone(backbone_id: str, project_dir: Path | None = None, device: Any = None) -> dict[str, Any]:
    """Everything ``prism backbones show`` prints, as JSON-ready data.

    An unknown id raises the registry's UsageError (exit 2, with did-you-mean).
    """
    from prism.plugins import registry

    entry = registry("backbone", project_dir or Path.cwd()).entry(backbone_id)
    cls = entry.load()
    device = device or compute_device()
    precisions = available_precisions(device)
    attention = available_attention(device)
    return {
        "id": entry.id,
        "summary": entry.summary,
        "provider": entry.provider,
        "class": entry.target if isinstance(entry.target, str) else repr(entry.target),
        "loads": _doc(cls),
        "formats": list(vars(cls).get("formats", ())),  # a subclass's own list only: inherited ones may not fit
        "builtin_models": builtin_models(),
        "target_presets": dict(TARGET_PRESETS),
        "device": str(device),
        "precisions": {mode: {"available": reason is None, "reason": reason, "what": DESCRIPTIONS[mode]}
                       for mode, reason in precisions.items()},
        "attention": {name: {"available": reason is None, "reason": reason} for name, reason in attention.items()},
        "attention_auto": auto_attention(device),
        "routing_tower": "[backbone] routing_tower (a CLIPModel folder or hub id); when unset, the backbone's "
                         "own full CLIP if it has one, builtin:tiny-clip for the tiny models",
    }
