"""CLIP image and text features of a batch, for methods that route on the input.

Image features are cached by the image's content identity (``Batch.image_ids``: the
manifest's sha256, else path, size and mtime) *and* the routing tower's fingerprint,
so a feature made by one tower is never served for another. Text features are cached
by the instruction text and the encoder. The text encoder is pluggable: the routing
tower's CLIP text model by default (projected features, in the image space), or any
object with ``text_embeddings(texts) -> [N, dim]``, ``dim`` and ``fingerprint`` (e.g. a
sentence-transformers model, as SMoLoRA routes instructions). ``PooledClipText`` is CLIP's
pooled text output before the projection (what HiDe-LLaVA's release routes on).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Sequence

import torch


class FeatureCache:
    """``image_features(batch)`` / ``text_features(batch)`` with an LRU cache of ``capacity`` entries per kind."""

    def __init__(self, tower: Any, *, text_encoder: Any = None, capacity: int = 100_000):
        self.tower = tower
        self.text_encoder = text_encoder if text_encoder is not None else tower
        self.capacity = int(capacity)
        self._images: OrderedDict[tuple[str, str], torch.Tensor] = OrderedDict()
        self._texts: OrderedDict[tuple[str, str], torch.Tensor] = OrderedDict()
        self.computed = {"image": 0, "text": 0}

    def image_features(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(``[B, dim]`` features, ``[B]`` bool: the sample has an image); zero rows without one."""
        from PIL import Image

        fingerprint = self.tower.fingerprint
        keys = [None if path is None else (fingerprint, identity or path)
                for path, identity in zip(_paths(batch), _ids(batch))]
        missing = {key: path for key, path in zip(keys, _paths(batch)) if key is not None and key not in self._images}
        if missing:
            images = []
            for path in missing.values():
                with Image.open(path) as image:
                    images.append(image.convert("RGB"))
            features = self.tower.image_embeddings(images)
            self.computed["image"] += len(images)
            for key, row in zip(missing, features):
                self._put(self._images, key, row.detach().cpu())
        rows = [self._get(self._images, key) if key is not None else None for key in keys]
        return _stacked(rows, self.tower.dim), torch.tensor([row is not None for row in rows])

    def text_features(self, batch: Any) -> torch.Tensor:
        """``[B, dim]`` features of the samples' instructions (``Batch.instructions``)."""
        encoder = self.text_encoder
        fingerprint = getattr(encoder, "fingerprint", type(encoder).__name__)
        keys = [(fingerprint, text) for text in batch.instructions]
        missing = list(dict.fromkeys(key for key in keys if key not in self._texts))
        if missing:
            features = encoder.text_embeddings([text for _, text in missing])
            self.computed["text"] += len(missing)
            for key, row in zip(missing, features):
                self._put(self._texts, key, row.detach().cpu())
        return torch.stack([self._get(self._texts, key) for key in keys]) if keys else torch.zeros(0, encoder.dim)

    def _put(self, store: OrderedDict, key: Any, value: torch.Tensor) -> None:
        store[key] = value
        store.move_to_end(key)
        while len(store) > self.capacity:
            store.popitem(last=False)

    @staticmethod
    def _get(store: OrderedDict, key: Any) -> torch.Tensor:
        store.move_to_end(key)
        return store[key]


class PooledClipText:
    """The routing tower's text features before CLIP's projection: ``[N, text hidden size]`` unit vectors.

    Its fingerprint differs from the tower's, so cached or stored projected features are
    never taken for pooled ones.
    """

    def __init__(self, tower: Any):
        self.tower = tower

    @property
    def dim(self) -> int:
        return int(self.tower.model.config.text_config.hidden_size)

    @property
    def fingerprint(self) -> str:
        return f"{self.tower.fingerprint}:pooled-text"

    def text_embeddings(self, texts: Sequence[str]) -> torch.Tensor:
        from prism.backbones.routing import instruction_text

        tower = self.tower
        encoded = tower.tokenizer([instruction_text(t) for t in texts], padding=True, truncation=True,
                                  max_length=tower.max_text_tokens, return_tensors="pt")
        device = next(tower.model.parameters()).device
        with torch.no_grad():
            pooled = tower.model.text_model(input_ids=encoded["input_ids"].to(device),
                                            attention_mask=encoded["attention_mask"].to(device)).pooler_output
        return torch.nn.functional.normalize(pooled.float(), dim=-1)


def _paths(batch: Any) -> Sequence[str | None]:
    return batch.image_paths or [None] * len(batch)


def _ids(batch: Any) -> Sequence[str | None]:
    return batch.image_ids or [None] * len(batch)


def _stacked(rows: list[torch.Tensor | None], dim: int) -> torch.Tensor:
    zero = torch.zeros(dim)
    return torch.stack([zero if row is None else row for row in rows]) if rows else torch.zeros(0, dim)
