"""The frozen vision-tower feature cache: same greedy answers, served on a second pass, never trusts a bad entry."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch

from prism.backbones import feature_cache as fc
from prism.benchmarks import synthetic as syn


def _load(kind: str):
    from prism.backbones.internvl import InternVLBackbone
    from prism.backbones.llava import LlavaBackbone

    cls = InternVLBackbone if kind == "internvl" else LlavaBackbone
    loaded = cls().load(SimpleNamespace(id=kind, model=f"builtin:tiny-{kind}", attn="auto", train_precision="fp32"))
    loaded.model.requires_grad_(False)  # as every method leaves the tower
    return loaded


@pytest.fixture(scope="module", params=["llava", "internvl"])
def backbone(request):
    return _load(request.param)


def _batch(backbone, n: int = 3, seed: int = 0):
    from prism.backbones import tiny
    from prism.benchmarks.data import EncodedSample, collate, encode_text, pixel_values

    rng = random.Random(seed)
    samples = []
    for _ in range(n):
        image = syn.render_scene(syn.random_scene(rng, 2))
        ids, _ = encode_text([("human", f"<image>\n{tiny.DESCRIBE}")], backbone, num_images=1,
                             add_generation_prompt=True)
        samples.append(EncodedSample(ids, None, pixel_values([image], backbone.image_processor)[0], {}, ""))
    return collate(samples, backbone.tokenizer.pad_token_id, "left")


def _greedy(backbone, batch) -> torch.Tensor:
    with torch.no_grad():
        return backbone.model.generate(**batch.model_inputs(), max_new_tokens=6, do_sample=False)


def _fresh_model_without_cache(backbone):
    fc.attach(backbone, "off", None)


def test_greedy_answers_identical_and_second_pass_served(backbone, tmp_path):
    _fresh_model_without_cache(backbone)
    batch = _batch(backbone)
    plain = _greedy(backbone, batch)
    cache = fc.attach(backbone, "memory", tmp_path)
    first = _greedy(backbone, batch)
    assert cache.encoded == 3 and cache.served == 0
    second = _greedy(backbone, batch)
    assert torch.equal(plain, first) and torch.equal(plain, second)
    assert cache.encoded == 3 and cache.served == 3  # the prefill only: decode steps carry no pixels
    assert fc.stats_of(backbone)["images_served"] == 3
    _fresh_model_without_cache(backbone)


def test_disk_entry_with_wrong_fingerprint_or_corrupt_bytes_is_recomputed(backbone, tmp_path):
    _fresh_model_without_cache(backbone)
    batch = _batch(backbone, n=2, seed=1)
    plain = _greedy(backbone, batch)
    cache = fc.attach(backbone, "disk", tmp_path)
    _greedy(backbone, batch)
    files = sorted((tmp_path / fc.DISK_FOLDER).rglob("*.safetensors"))
    assert len(files) == 2 and cache.encoded == 2
    # a new run (fresh memory) reads the disk entries
    cache = fc.attach(backbone, "disk", tmp_path)
    assert torch.equal(_greedy(backbone, batch), plain) and cache.served == 2 and cache.encoded == 0
    # one entry corrupted, the other with another tower's fingerprint in its metadata
    from safetensors.torch import load_file, save_file

    files[0].write_bytes(files[0].read_bytes()[:40])
    tensor = load_file(str(files[1]))
    save_file(tensor, str(files[1]), metadata={"fingerprint": "0" * 64, "key": files[1].stem,
                                                "shape": str(list(tensor["feature"].shape)),
                                                "dtype": str(tensor["feature"].dtype)})
    cache = fc.attach(backbone, "disk", tmp_path)
    assert torch.equal(_greedy(backbone, batch), plain)
    assert cache.rejected == 2 and cache.encoded == 2 and cache.served == 0
    cache = fc.attach(backbone, "disk", tmp_path)  # rewritten: trusted again
    _greedy(backbone, batch)
    assert cache.served == 2 and cache.rejected == 0
    _fresh_model_without_cache(backbone)


def test_training_bypasses_the_cache(backbone, tmp_path):
    _fresh_model_without_cache(backbone)
    cache = fc.attach(backbone, "memory", tmp_path)
    batch = _batch(backbone, n=2, seed=2)
    tower = backbone.model.model.vision_tower
    # autograd on: bypassed even with a frozen tower
    projector = backbone.model.model.multi_modal_projector
    projector.requires_grad_(True)  # a trainable part after the tower, as adapters are
    backbone.model(**batch.model_inputs()).logits.sum().backward()
    assert cache.encoded == cache.served == 0
    assert all(p.grad is not None for p in projector.parameters())
    # a trainable tower gets its gradients, with autograd off it is still bypassed
    tower.requires_grad_(True)
    backbone.model.zero_grad()
    backbone.model(**batch.model_inputs()).logits.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in tower.parameters())
    with torch.no_grad():
        backbone.model(**batch.model_inputs())
    assert cache.encoded == cache.served == 0
    backbone.model.requires_grad_(False)
    backbone.model.zero_grad()
    _fresh_model_without_cache(backbone)


def test_unknown_mode_is_a_config_error(backbone):
    from prism.errors import ConfigError

    with pytest.raises(ConfigError):
        fc.attach(backbone, "sometimes", None)
    cache = fc.attach(backbone, "memory", None)
    assert fc.attach(backbone, "off", None) is None
    _greedy(backbone, _batch(backbone, n=1))
    assert cache.encoded == cache.served == 0 and fc.stats_of(backbone) == {"mode": "off"}


def test_changed_tower_weights_are_not_served_stale_features(backbone):
    _fresh_model_without_cache(backbone)
    batch = _batch(backbone, n=2, seed=3)
    cache = fc.attach(backbone, "memory", None)
    _greedy(backbone, batch)
    weight = next(backbone.model.model.vision_tower.parameters())
    saved = weight.detach().clone()
    try:
        with torch.no_grad():
            weight.add_(0.5)  # as an optimizer step on a tower some method trained would
        changed = _greedy(backbone, batch)
        assert cache.encoded == 4 and cache.served == 0  # a new fingerprint: encoded again
        fc.attach(backbone, "off", None)
        assert torch.equal(_greedy(backbone, batch), changed)
    finally:
        with torch.no_grad():
            weight.copy_(saved)
    _fresh_model_without_cache(backbone)
