"""Routing features of a batch: cached by image content and tower, never shared across towers."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from prism.backbones.routing import load_routing_tower
from prism.backbones.routing_features import FeatureCache


def _batch(synthetic_data, n=4):
    from prism.backbones.llava import LlavaBackbone
    from prism.benchmarks.data import TaskDataset, load_test_records
    from prism.benchmarks.synthetic import TASKS

    backbone = LlavaBackbone().load(SimpleNamespace(model="builtin:tiny-llava", attn="auto"))
    spec = TASKS[0].spec
    records = load_test_records(synthetic_data, spec, max_samples=n)
    records.append({"question_id": "text-only", "text": "Repeat the words: red", "answer": "red"})
    dataset = TaskDataset(records, backbone=backbone, root=synthetic_data, specs=spec, prompts=True)
    return next(iter(dataset.batches(len(records), shuffle=False)))


def test_batches_carry_image_files_and_identities(synthetic_data):
    batch = _batch(synthetic_data)
    assert len(batch.image_paths) == len(batch) and batch.image_paths[-1] is None and batch.image_ids[-1] is None
    assert all(p.endswith(".png") for p in batch.image_paths[:-1])
    assert all(i.startswith(("sha256:", "file:")) for i in batch.image_ids[:-1])


class _CountingTower:
    def __init__(self, tower, fingerprint):
        self.inner, self.fingerprint, self.dim, self.calls = tower, fingerprint, tower.dim, 0

    def image_embeddings(self, images):
        self.calls += len(images)
        return self.inner.image_embeddings(images)

    def text_embeddings(self, texts):
        return self.inner.text_embeddings(texts)


def test_features_are_computed_once_per_image_and_tower(synthetic_data):
    batch = _batch(synthetic_data)
    tower = _CountingTower(load_routing_tower("builtin:tiny-clip"), "tower-a")
    cache = FeatureCache(tower)
    first, has_image = cache.image_features(batch)
    assert has_image.tolist() == [True] * (len(batch) - 1) + [False]
    assert first.shape == (len(batch), tower.dim) and torch.all(first[-1] == 0)
    again, _ = cache.image_features(batch)
    assert torch.equal(first, again) and tower.calls == len(batch) - 1  # served from the cache
    texts = cache.text_features(batch)
    assert texts.shape == (len(batch), tower.dim) and cache.computed["text"] == len(set(batch.instructions))
    other = _CountingTower(tower.inner, "tower-b")
    cache.tower = other
    cache.image_features(batch)
    assert other.calls == len(batch) - 1  # another tower's features are never reused


def test_pooled_text_is_clips_text_feature_before_the_projection():
    from prism.backbones.routing_features import PooledClipText

    tower = load_routing_tower("builtin:tiny-clip")
    pooled = PooledClipText(tower)
    texts = ["What colour is the shape?", "<image>\nHow many shapes are in the image?"]
    features = pooled.text_embeddings(texts)
    assert features.shape == (2, pooled.dim) and pooled.dim == tower.model.config.text_config.hidden_size
    assert torch.allclose(features.norm(dim=-1), torch.ones(2), atol=1e-5)
    encoded = tower.tokenizer([t.replace("<image>", "").strip() for t in texts], padding=True, return_tensors="pt")
    with torch.no_grad():
        raw = tower.model.text_model(**encoded).pooler_output
        projected = torch.nn.functional.normalize(tower.model.text_projection(raw), dim=-1)
    assert torch.allclose(projected, tower.text_embeddings(texts), atol=1e-5)
    assert torch.allclose(torch.nn.functional.normalize(raw, dim=-1), features, atol=1e-5)
    assert pooled.fingerprint != tower.fingerprint
