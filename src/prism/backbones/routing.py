"""The routing tower: CLIP image and instruction embeddings for methods that route by input.

HiDe-LLaVA, DisCo, ModalPrompt, SMoLoRA and CL-MoE choose or weight adapters by
comparing an input's CLIP embeddings with per-task anchors or prototypes. The
backbone's own vision tower is not that encoder: it lacks a text tower and the
projections into the shared image/text space (PRISM's port used 1024-d vision
states where 768-d CLIP embeddings were meant, and its routing silently broke).
So the routing tower is a full ``CLIPModel`` named by ``[backbone] routing_tower``,
and feature dimensions are checked wherever stored features meet a tower.

Methods get it lazily with :func:`routing_tower_for` (loaded once per run).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from prism.errors import ConfigError, PrismError

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from prism.backbones.base import LoadedBackbone

KEY = "[backbone] routing_tower"
BUILTIN_PREFIX = "builtin:"
#: ``LoadedBackbone.extra`` keys: a backbone that carries a full CLIP names its folder under
#: CLIP_FOLDER; the run's configured setting (resolved against the project folder) is SETTING.
CLIP_FOLDER = "clip_folder"
SETTING = "routing_tower"
_CACHE = "_routing_towers"
#: prism's tiny backbones (prism_tiny.json) pair with this tower, built on the same synthetic words.
TINY_COMPANION = "builtin:tiny-clip"
#: The LLaVA conversation placeholder: it is not part of the instruction a router should read.
IMAGE_PLACEHOLDER = "<image>"
EXAMPLE_SETTING = 'routing_tower = "openai/clip-vit-large-patch14-336"'


class RoutingTower:
    """A frozen ``CLIPModel`` with its tokenizer and image processor.

    Embeddings are the projected features (the shared image/text space),
    L2-normalised, float32, computed without gradients in batches, and returned
    on ``device``.
    """

    def __init__(self, model: Any, tokenizer: Any, image_processor: Any, *, source: str,
                 folder: Path | None = None, device: Any = "cpu", batch_size: int = 64):
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.source = source
        self.folder = folder
        self.device = device
        self.batch_size = int(batch_size)
        config = model.config.text_config
        limits = [n for n in (getattr(config, "max_position_embeddings", None),
                              getattr(tokenizer, "model_max_length", None)) if isinstance(n, int) and n > 0]
        self.max_text_tokens = min(limits) if limits else 77
        self._fingerprint: str | None = None

    @property
    def dim(self) -> int:
        """Dimension of both embeddings (``projection_dim``)."""
        return int(self.model.config.projection_dim)

    @property
    def fingerprint(self) -> str:
        """Hash of the tower's config, preprocessing, vocabulary and weight files: stored next to
        features so that features from another tower are recognised, never trusted."""
        if self._fingerprint is None:
            digest = hashlib.sha256()
            config = _without_paths(self.model.config.to_dict())
            digest.update(json.dumps(config, sort_keys=True, default=str).encode())
            digest.update(json.dumps(_processor_dict(self.image_processor), sort_keys=True, default=str).encode())
            vocab = sorted(self.tokenizer.get_vocab().items(), key=lambda kv: kv[1])
            digest.update("\n".join(tok for tok, _ in vocab).encode("utf-8"))
            if self.folder is not None:
                for path in sorted(self.folder.glob("*.safetensors")) + sorted(self.folder.glob("*.bin")):
                    digest.update(f"{path.name}:{path.stat().st_size}".encode())
            self._fingerprint = digest.hexdigest()[:16]
        return self._fingerprint

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "folder": str(self.folder) if self.folder else None, "dim": self.dim,
                "fingerprint": self.fingerprint}

    # -- embeddings ----------------------------------------------------------------------
    def image_embeddings(self, images: Sequence["Image.Image"]) -> "torch.Tensor":
        """``[N, dim]`` unit vectors for PIL images (converted to RGB)."""
        import torch

        chunks = []
        for part in _chunks(list(images), self.batch_size):
            rgb = [image if image.mode == "RGB" else image.convert("RGB") for image in part]
            pixels = self.image_processor(images=rgb, return_tensors="pt")["pixel_values"]
            with torch.no_grad():
                features = self.model.get_image_features(pixel_values=pixels.to(self._device(), self._dtype()))
            chunks.append(_normalised(features))
        return self._stack(chunks)

    def text_embeddings(self, texts: Sequence[str]) -> "torch.Tensor":
        """``[N, dim]`` unit vectors for instructions; ``<image>`` is dropped and long texts are truncated."""
        import torch

        chunks = []
        for part in _chunks([instruction_text(t) for t in texts], self.batch_size):
            encoded = self.tokenizer(part, padding=True, truncation=True, max_length=self.max_text_tokens,
                                     return_tensors="pt")
            with torch.no_grad():
                features = self.model.get_text_features(input_ids=encoded["input_ids"].to(self._device()),
                                                        attention_mask=encoded["attention_mask"].to(self._device()))
            chunks.append(_normalised(features))
        return self._stack(chunks)

    def check_features(self, features: Any, where: str, *, error: type[PrismError] = ConfigError) -> None:
        """Raise ``error`` unless ``features`` (a tensor or a dimension) fit this tower."""
        check_feature_dim(features, self.dim, where, tower=self.source, error=error)

    # -- helpers -----------------------------------------------------------------------------
    def _device(self) -> Any:
        return next(self.model.parameters()).device

    def _dtype(self) -> Any:
        return next(self.model.parameters()).dtype

    def _stack(self, chunks: list["torch.Tensor"]) -> "torch.Tensor":
        import torch

        if not chunks:
            return torch.zeros(0, self.dim, device=self.device)
        return torch.cat(chunks).to(self.device)


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _normalised(features: Any) -> "torch.Tensor":
    import torch

    pooled = getattr(features, "pooler_output", features)  # transformers 5 returns a model output
    return torch.nn.functional.normalize(pooled.float(), dim=-1)


#: config keys that record where a model was loaded from, not what it is
PATH_KEYS = frozenset({"_name_or_path", "name_or_path"})


def _without_paths(value: Any) -> Any:
    """``value`` without the loading-path keys (nested configs included): the same tower in another
    folder (another machine, another install) must keep its fingerprint."""
    if isinstance(value, dict):
        return {k: _without_paths(v) for k, v in value.items() if k not in PATH_KEYS}
    if isinstance(value, list):
        return [_without_paths(v) for v in value]
    return value


def _processor_dict(image_processor: Any) -> dict[str, Any]:
    to_dict = getattr(image_processor, "to_dict", None)
    return to_dict() if callable(to_dict) else {"class": type(image_processor).__name__}


def instruction_text(text: str) -> str:
    """The instruction a router reads: the text without LLaVA's ``<image>`` placeholder."""
    return " ".join(text.replace(IMAGE_PLACEHOLDER, " ").split())


# -- dimension checks ------------------------------------------------------------------------
def feature_dim(features: Any) -> int:
    """The last dimension of a tensor (or an int given as is)."""
    if isinstance(features, int):
        return features
    shape = getattr(features, "shape", None)
    if shape is None or len(shape) == 0:
        raise TypeError(f"expected a feature tensor or a dimension, got {type(features).__name__}")
    return int(shape[-1])


def check_feature_dim(stored: Any, expected: Any, where: str, *, tower: str | None = None,
                      error: type[PrismError] = ConfigError) -> None:
    """Raise ``error`` when stored features and the tower that will use them disagree on dimension.

    ``stored``/``expected`` are tensors or ints. Use ``error=CheckpointError`` when
    the stored side was read from a checkpoint.
    """
    got, want = feature_dim(stored), feature_dim(expected)
    if got == want:
        return
    setting = f"{KEY} = {tower!r}" if tower else KEY
    raise error(f"{where}: features of dimension {got} do not fit the routing tower's {want}-d embeddings "
                f"({setting})",
                hint="features must come from the routing tower itself (CLIP's projected image/text "
                     "embeddings, not the backbone's vision states), and a checkpoint's anchors must be used "
                     f"with the {KEY} that made them")


# -- finding and loading a tower ---------------------------------------------------------------
def _assets_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "assets"


def _clip_folders() -> list[str]:
    root = _assets_dir()
    return sorted(p.name for p in root.iterdir() if _model_type(p) == "clip") if root.is_dir() else []


def _model_type(folder: Path) -> str | None:
    try:
        data = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data.get("model_type") if isinstance(data, dict) else None


def resolve_tower_folder(source: str, key: str = KEY, *, fetch: bool = True) -> Path | None:
    """A local folder holding a full CLIPModel: a builtin, a folder, or a hub snapshot.

    ``fetch=False`` checks without downloading: a hub id gives None (``prism config validate``).
    """
    if source.startswith(BUILTIN_PREFIX):
        folder = _assets_dir() / source[len(BUILTIN_PREFIX):]
        if _model_type(folder) != "clip":
            known = ", ".join(BUILTIN_PREFIX + n for n in _clip_folders()) or "none installed"
            raise ConfigError(f"{key} = {source!r}: no such builtin CLIP model; available: {known}")
        return folder
    local = Path(source).expanduser()
    if local.is_dir():
        folder = local.resolve()
    elif local.exists() or source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise ConfigError(f"{key} = {source!r}: not a folder or a hub id (owner/name)",
                          hint="name a CLIPModel folder or hub id, e.g. openai/clip-vit-large-patch14-336")
    elif not fetch:
        return None
    else:
        folder = _hub_snapshot(source, key)
    kind = _model_type(folder)
    if kind != "clip":
        what = "has no readable config.json" if kind is None else f"holds a {kind!r} model"
        hint = ("a vision-only tower (clip_vision_model) has no text tower: routing needs the full CLIP "
                "with both towers and projections" if kind == "clip_vision_model" else
                "routing needs a full CLIPModel (vision + text towers), e.g. openai/clip-vit-large-patch14-336")
        raise ConfigError(f"{key} = {source!r}: {folder} {what}, not a CLIP model", hint=hint)
    return folder


def _hub_snapshot(repo_id: str, key: str) -> Path:
    from prism.backbones.llava import hub_snapshot

    return hub_snapshot(repo_id, key)


def load_routing_tower(source: str, *, device: Any = "cpu", batch_size: int = 64, key: str = KEY) -> RoutingTower:
    """Load the CLIP named by ``source``: fp32 on a CPU, 16-bit on a GPU (embeddings are fp32 either way)."""
    import torch
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    from prism.backbones.quiet import quiet_transformers

    folder = resolve_tower_folder(source, key)
    cuda = "cuda" in str(device) and torch.cuda.is_available()
    dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if cuda else torch.float32
    with quiet_transformers():
        try:
            model = CLIPModel.from_pretrained(folder, dtype=dtype)
            tokenizer = AutoTokenizer.from_pretrained(folder)
            image_processor = AutoImageProcessor.from_pretrained(folder)
        except (OSError, ValueError) as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ConfigError(f"{key} = {source!r}: cannot load the CLIP model in {folder} ({reason})") from None
    model.to(device)
    return RoutingTower(model, tokenizer, image_processor, source=source, folder=folder, device=device,
                        batch_size=batch_size)


def default_source(backbone: "LoadedBackbone") -> str:
    """The tower to use when ``[backbone] routing_tower`` is not set, or a ConfigError saying to set it.

    The backbone's own CLIP when it has a full one (``extra["clip_folder"]``, or the
    ``mm_vision_tower`` folder of an original-format LLaVA); prism's tiny models pair
    with ``builtin:tiny-clip``.
    """
    extra = backbone.extra or {}
    candidates = [extra.get(CLIP_FOLDER)]
    original = extra.get("original_llava") or {}
    if isinstance(original, dict) and original.get("vision_tower_kind", "clip") == "clip":
        candidates.append(original.get("vision_tower"))
    for folder in candidates:
        if folder and _model_type(Path(folder)) == "clip":
            return str(folder)
    if extra.get("prism_tiny"):
        return TINY_COMPANION
    own = next((str(f) for f in candidates if f), None)
    reason = (f"its vision tower {own} is not a full CLIP model (a text tower and projections are needed)"
              if own else "it has no full CLIP model (vision + text towers) of its own")
    raise ConfigError(f"{KEY} is not set and the backbone ({backbone.model_path}) cannot supply routing "
                      f"features: {reason}. Methods that route by input need CLIP image and text embeddings",
                      hint=f"set {EXAMPLE_SETTING} under [backbone] (a local folder or hub id of a CLIPModel; "
                           f'"{TINY_COMPANION}" for tests)')


def routing_tower_for(config: Any, backbone: "LoadedBackbone", *, device: Any = None,
                      batch_size: int = 64) -> RoutingTower:
    """The run's routing tower, loaded on first use and cached on the backbone.

    ``config`` is the routing_tower setting or anything holding it (the whole
    config, its ``[backbone]`` table); None uses the setting the engine recorded
    when it loaded the backbone. ``device`` defaults to the backbone model's device.
    """
    setting = _setting(config)
    if setting is None:
        setting = (backbone.extra or {}).get(SETTING) or None
    source = setting or default_source(backbone)
    if device is None:
        device = _model_device(backbone.model)
    cache = backbone.extra.setdefault(_CACHE, {})
    cache_key = (source, str(device))
    if cache_key not in cache:
        cache[cache_key] = load_routing_tower(source, device=device, batch_size=batch_size)
    return cache[cache_key]


def _setting(config: Any) -> str | None:
    if config is None or isinstance(config, str):
        return config or None
    holder = getattr(config, "backbone", config)
    value = getattr(holder, "routing_tower", None)
    return value or None


def _model_device(model: Any) -> Any:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return "cpu"


__all__ = ["CLIP_FOLDER", "KEY", "RoutingTower", "check_feature_dim", "default_source",
           "feature_dim", "instruction_text", "load_routing_tower", "resolve_tower_folder", "routing_tower_for"]
