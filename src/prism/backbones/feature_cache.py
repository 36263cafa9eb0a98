"""A cache of the frozen vision tower's output, per image, for evaluation.

The vision tower is frozen in every method, so a test image's tower output is the
same in every row of the accuracy matrix. ``FeatureCache`` keeps the *selected*
feature layer (what feeds the projector) per image, keyed by the tower's fingerprint
(weights, feature layer, select strategy, class) and the sha256 of the image's
preprocessed pixel tensor (bytes, shape, dtype: content and preprocessing). The
projector and the language model still run every time, so adapters on them count.

The cache is used only when no tower parameter requires grad and autograd is off;
in training it is bypassed. The weights are hashed again whenever a tower tensor changes
in place (its version counter), so a tower some method trained is never served stale features.
A disk entry whose fingerprint, key, shape or dtype does
not match (or that cannot be read) is recomputed and overwritten, never trusted.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from prism.atomic import write_file_atomic

MODES = ("memory", "disk", "off")
DISK_FOLDER = Path("cache") / "vision_features"
_FEATURE = "feature"


def tower_fingerprint(tower: torch.nn.Module, feature_layer: Any, strategy: Any) -> str:
    """sha256 over the tower's class, its tensors (names, shapes, dtypes, bytes) and the feature selection."""
    digest = hashlib.sha256()
    digest.update(f"{type(tower).__module__}.{type(tower).__qualname__}|{feature_layer!r}|{strategy!r}".encode())
    for name, tensor in sorted(tower.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tuple(t.shape)}|{t.dtype}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def pixel_key(pixels: torch.Tensor) -> str:
    """sha256 of one image's preprocessed pixels with their shape and dtype."""
    t = pixels.detach().cpu().contiguous()
    digest = hashlib.sha256(f"{tuple(t.shape)}|{t.dtype}".encode())
    digest.update(t.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class FeatureCache:
    """Per-image selected tower features: an LRU memory store bounded by bytes, and an optional disk store."""

    def __init__(self, *, disk_dir: Path | None = None, max_bytes: int = 512 * 2**20):
        self.disk_dir = Path(disk_dir) if disk_dir is not None else None
        self.max_bytes = max_bytes
        self._memory: OrderedDict[tuple[str, str], torch.Tensor] = OrderedDict()
        self._bytes = 0
        self.encoded = 0
        self.served = 0
        self.rejected = 0  # disk entries that did not match and were recomputed

    def stats(self) -> dict[str, Any]:
        """Counters for run.json and ``prism infer --json``."""
        return {"mode": "disk" if self.disk_dir is not None else "memory", "images_encoded": self.encoded,
                "images_served": self.served, "disk_entries_rejected": self.rejected,
                "memory_entries": len(self._memory), "memory_bytes": self._bytes}

    def get(self, fingerprint: str, key: str) -> torch.Tensor | None:
        """The cached feature, or None (a mismatching disk entry counts as rejected)."""
        hit = self._memory.get((fingerprint, key))
        if hit is not None:
            self._memory.move_to_end((fingerprint, key))
            return hit
        if self.disk_dir is None:
            return None
        feature = self._read_disk(fingerprint, key)
        if feature is not None:
            self._remember(fingerprint, key, feature)
        return feature

    def put(self, fingerprint: str, key: str, feature: torch.Tensor) -> None:
        feature = feature.detach().cpu().contiguous()
        self._remember(fingerprint, key, feature)
        if self.disk_dir is not None:
            self._write_disk(fingerprint, key, feature)

    def _remember(self, fingerprint: str, key: str, feature: torch.Tensor) -> None:
        size = feature.numel() * feature.element_size()
        if size > self.max_bytes:
            return
        old = self._memory.pop((fingerprint, key), None)
        if old is not None:
            self._bytes -= old.numel() * old.element_size()
        self._memory[(fingerprint, key)] = feature
        self._bytes += size
        while self._bytes > self.max_bytes:
            _, evicted = self._memory.popitem(last=False)
            self._bytes -= evicted.numel() * evicted.element_size()

    def disk_path(self, fingerprint: str, key: str) -> Path:
        assert self.disk_dir is not None
        return self.disk_dir / fingerprint[:32] / f"{key}.safetensors"

    def _read_disk(self, fingerprint: str, key: str) -> torch.Tensor | None:
        from safetensors import safe_open

        path = self.disk_path(fingerprint, key)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                feature = f.get_tensor(_FEATURE)
            ok = (meta.get("fingerprint") == fingerprint and meta.get("key") == key
                  and meta.get("shape") == str(list(feature.shape)) and meta.get("dtype") == str(feature.dtype))
        except Exception:  # unreadable or truncated: recompute
            ok = False
        if not ok:
            self.rejected += 1
            return None
        return feature

    def _write_disk(self, fingerprint: str, key: str, feature: torch.Tensor) -> None:
        """Atomic (prism.atomic), so a kill never leaves a half-written entry under the key."""
        from safetensors.torch import save

        meta = {"fingerprint": fingerprint, "key": key, "shape": str(list(feature.shape)),
                "dtype": str(feature.dtype)}
        write_file_atomic(self.disk_path(fingerprint, key), save({_FEATURE: feature}, metadata=meta))


def _tensor_versions(tower: torch.nn.Module) -> tuple:
    """Identity and in-place version of every tensor of the tower: cheap, and changes with its weights."""
    return tuple((t.data_ptr(), t._version) for t in (*tower.parameters(), *tower.buffers()))


def _frozen(tower: torch.nn.Module) -> bool:
    return not torch.is_grad_enabled() and not any(p.requires_grad for p in tower.parameters())


def install(model: Any, cache: FeatureCache) -> FeatureCache:
    """Route ``model.model.get_image_features`` (transformers' LlavaModel) through ``cache``.

    The instance attribute shadows the class method, so the model's own forward and
    generate use it; the original runs unchanged whenever the cache cannot apply
    (a tower with trainable parameters, autograd on, per-image sizes).
    """
    inner = getattr(model, "model", model)
    if getattr(inner, "_prism_feature_cache", None) is not None:
        inner._prism_feature_cache = cache
        return cache
    original = inner.get_image_features
    fingerprints: dict[tuple[Any, Any], tuple[tuple, str]] = {}

    def get_image_features(pixel_values: torch.Tensor, vision_feature_layer: Any = None,
                           vision_feature_select_strategy: Any = None, **kwargs: Any) -> Any:
        active = inner._prism_feature_cache
        layer = vision_feature_layer if vision_feature_layer is not None else inner.config.vision_feature_layer
        strategy = (vision_feature_select_strategy if vision_feature_select_strategy is not None
                    else inner.config.vision_feature_select_strategy)
        if (active is None or kwargs.get("image_sizes") is not None or pixel_values.dim() != 4
                or not _frozen(inner.vision_tower)):
            return original(pixel_values, vision_feature_layer=vision_feature_layer,
                            vision_feature_select_strategy=vision_feature_select_strategy, **kwargs)
        # hashing the weights is done again only when a tensor of the tower changed in place
        # (an optimizer step or load_state_dict bumps its version), e.g. a method that trained it
        state = _tensor_versions(inner.vision_tower)
        known = fingerprints.get((layer, strategy))
        if known is None or known[0] != state:
            known = fingerprints[(layer, strategy)] = (state, tower_fingerprint(inner.vision_tower, layer, strategy))
        fingerprint = known[1]
        keys = [pixel_key(p) for p in pixel_values]
        found = [active.get(fingerprint, k) for k in keys]
        missing = [i for i, f in enumerate(found) if f is None]
        if missing:
            computed = _selected_features(inner, pixel_values[missing], layer, strategy)
            for row, i in enumerate(missing):
                found[i] = computed[row]
                active.put(fingerprint, keys[i], computed[row])
        active.encoded += len(missing)
        active.served += len(keys) - len(missing)
        device = pixel_values.device
        selected = torch.stack([f.to(device) for f in found])
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        return BaseModelOutputWithPooling(pooler_output=list(inner.multi_modal_projector(selected)))

    inner.get_image_features = get_image_features
    inner._prism_feature_cache = cache
    return cache


def uninstall(model: Any) -> None:
    """Back to transformers' own ``get_image_features``."""
    inner = getattr(model, "model", model)
    inner.__dict__.pop("get_image_features", None)
    inner.__dict__.pop("_prism_feature_cache", None)


def _selected_features(inner: Any, pixel_values: torch.Tensor, layer: Any, strategy: Any) -> torch.Tensor:
    """The tower output that feeds the projector: transformers' LlavaModel feature selection."""
    hidden = inner.vision_tower(pixel_values, output_hidden_states=True, return_dict=True).hidden_states
    layers = [layer] if isinstance(layer, int) else list(layer)
    pool = [hidden[i][:, 1:] if strategy == "default" else hidden[i] for i in layers]
    return pool[0] if len(pool) == 1 else torch.cat(pool, dim=-1)


def attach(backbone: Any, mode: str, output_dir: Path | None) -> FeatureCache | None:
    """Install the ``[infer] feature_cache`` mode on a loaded backbone; kept in ``backbone.extra``."""
    if mode not in MODES:
        from prism.errors import ConfigError

        raise ConfigError(f"[infer] feature_cache = {mode!r}: expected one of {', '.join(MODES)}")
    if mode == "off":
        uninstall(backbone.model)
        backbone.extra.pop("feature_cache", None)
        return None
    disk = Path(output_dir) / DISK_FOLDER if mode == "disk" and output_dir is not None else None
    cache = install(backbone.model, FeatureCache(disk_dir=disk))
    backbone.extra["feature_cache"] = cache
    return cache


def stats_of(backbone: Any) -> dict[str, Any]:
    """The backbone's cache counters, or ``{"mode": "off"}``."""
    cache = getattr(backbone, "extra", {}).get("feature_cache")
    return cache.stats() if cache is not None else {"mode": "off"}
