"""Slot operations shared by routed and MoE methods: depth selection, weight-space fusion, momentum."""

from __future__ import annotations

import pytest
import torch

from prism.adapters.inject import inject_adapters
from prism.adapters.slot_ops import (depth_layers, interpolate, layer_depth, other_layers, snapshot,
                                     weight_space_fusion)

from adapter_helpers import ATTN_AND_FFN, build_tiny_llava, make_inputs


@pytest.fixture
def adapters():
    model = build_tiny_llava()
    adapters = inject_adapters(model, ATTN_AND_FFN)
    generator = torch.Generator().manual_seed(3)
    for slot in ("t0", "t1"):
        adapters.add_slot(slot, r=4, alpha=8.0, generator=generator)
        for layer in adapters.layers.values():
            torch.nn.init.normal_(layer.lora_B[slot].weight, std=0.5, generator=generator)
    return adapters


def test_the_top_layer_is_found_by_depth(adapters):
    top = depth_layers(adapters, -1)
    assert top and all(layer_depth(p) == 1 for p in top)  # the helper model has 2 decoder layers
    assert depth_layers(adapters, 1) == top and all(layer_depth(p) == 0 for p in depth_layers(adapters, 0))
    assert set(other_layers(adapters, top)) | set(top) == set(adapters.layers)
    with pytest.raises(ValueError, match="outside"):
        depth_layers(adapters, 2)
    assert layer_depth("model.language_model.layers.31.mlp.up_proj") == 31
    assert layer_depth("model.vision_tower.encoder.layers.3.mlp.fc1") is None


def test_weight_space_fusion_is_the_product_of_summed_factors(adapters):
    layer = next(iter(adapters.layers.values()))
    x = torch.randn(2, 5, layer.in_features)
    a = layer.lora_A["t0"].weight + layer.lora_A["t1"].weight
    b = layer.lora_B["t0"].weight + layer.lora_B["t1"].weight
    expected = layer.base_layer(x) + layer.scaling["t0"] * x @ (b @ a).T
    adapters.set_delta_fn(weight_space_fusion(["t0", "t1"]))
    with torch.no_grad():
        fused = layer(x)
    assert torch.allclose(fused, expected, atol=1e-5)
    adapters.set_delta_fn(None)
    adapters.activate(["t0", "t1"])
    with torch.no_grad():
        summed = layer(x)
    cross = layer.scaling["t0"] * x @ (layer.lora_B["t0"].weight @ layer.lora_A["t1"].weight
                                       + layer.lora_B["t1"].weight @ layer.lora_A["t0"].weight).T
    assert torch.allclose(summed + cross, fused, atol=1e-5)  # the two fusions differ by the cross terms
    model_out = adapters.model(**make_inputs(2)).logits
    assert torch.isfinite(model_out).all()


def test_fusion_refuses_slots_of_different_scaling(adapters):
    adapters.add_slot("wide", r=8, alpha=8.0, seed=0)
    adapters.set_delta_fn(weight_space_fusion(["t0", "wide"]))
    layer = next(iter(adapters.layers.values()))
    with pytest.raises(ValueError, match="one scaling"):
        layer(torch.randn(1, 2, layer.in_features))


def test_momentum_blends_the_snapshot_back(adapters):
    saved = snapshot(adapters, ["t0"])
    live = adapters.named_parameters(["t0"])
    with torch.no_grad():
        for param in live.values():
            param.add_(1.0)
    interpolate(adapters, saved, keep=0.75)
    for path, param in live.items():
        assert torch.allclose(param, 0.75 * saved[path] + 0.25 * (saved[path] + 1.0), atol=1e-6)
    with pytest.raises(ValueError, match="keep"):
        interpolate(adapters, saved, keep=1.5)


def test_add_slot_draws_a_as_asked_and_takes_an_explicit_scaling():
    model = build_tiny_llava()
    adapters = inject_adapters(model, ATTN_AND_FFN)
    adapters.add_slot("kaiming", r=4, alpha=8.0, seed=0)
    adapters.add_slot("normal", r=4, alpha=8.0, seed=0, init=0.01)  # CoIN's MoELoRA: A ~ N(0, 0.01)
    adapters.add_slot("expert", r=2, alpha=0.0, seed=0, scaling=96 / 48)  # one expert of a split rank 48
    layer = next(iter(adapters.layers.values()))
    normal = layer.lora_A["normal"].weight
    assert abs(float(normal.detach().std()) - 0.01) < 0.003 and not torch.equal(normal, layer.lora_A["kaiming"].weight)
    bound = 1 / layer.in_features ** 0.5  # kaiming-uniform with a=√5 stays inside ±1/√fan_in
    assert float(layer.lora_A["kaiming"].weight.abs().max()) <= bound
    assert layer.scaling["expert"] == 2.0 and adapters.spec("expert").alpha == 4.0
    assert layer.scaling["kaiming"] == 2.0 and torch.count_nonzero(layer.lora_B["normal"].weight) == 0
    with pytest.raises(ValueError, match="init"):
        adapters.add_slot("bad", r=2, alpha=2.0, init="xavier")
