"""moelora: per-token gates over experts, Σ g_i B_i A_i x without cross terms, routers that learn."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from prism.methods.base import RunInfo
from prism.methods.moelora import ROUTER, MoELoRA, MoELoRAParams


def make(**params):
    from prism.backbones.llava import LlavaBackbone

    torch.manual_seed(0)
    backbone = LlavaBackbone().load(SimpleNamespace(model="builtin:tiny-llava", attn="auto"))
    method = MoELoRA(MoELoRAParams(**{"r": 8, "alpha": 16.0, "dropout": 0.0, "num_experts": 4, **params}),
                     RunInfo(num_tasks=3, task_names=["a", "b", "c"]))
    method.attach(backbone)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # B is zero at creation: give every expert a visible update
        for layer in method.adapters.layers.values():
            for name in method.experts:
                layer.lora_B[name].weight.copy_(torch.randn(layer.lora_B[name].weight.shape, generator=gen))
    return method


def test_defaults_are_coins_released_scripts():
    params = MoELoRAParams()
    assert (params.r, params.alpha, params.num_experts, params.init_a, params.gating) == (128, 256.0, 2, 0.01, "coin")
    method = make()
    layer = next(iter(method.adapters.layers.values()))
    assert method.expert_rank == 2 and all(layer.scaling[e] == 16 / 8 for e in method.experts)  # alpha / r_total
    weights = torch.cat([layer.lora_A[e].weight.detach().flatten() for e in method.experts])
    assert abs(float(weights.std()) - 0.01) < 0.002  # A ~ N(0, 0.01)
    assert make(num_experts=None).experts == ["expert0", "expert1", "expert2"]  # PRISM: one per task


def test_the_output_is_the_gated_sum_of_expert_updates_without_cross_terms():
    method = make()
    path, layer = next(iter(method.adapters.layers.items()))
    x = torch.randn(2, 5, layer.in_features, requires_grad=True)
    gates = layer.routers[ROUTER](x)
    assert gates.shape == (2, 5, 4) and torch.allclose(gates.sum(-1), torch.ones(2, 5), atol=1e-5)
    expected = layer.base_layer(x) + sum(gates[..., i:i + 1] * layer.scaling[e] * (x @ layer.lora_A[e].weight.T
                                          @ layer.lora_B[e].weight.T) for i, e in enumerate(method.experts))
    out = layer(x)
    assert torch.allclose(out, expected, atol=1e-5)
    out.sum().backward()
    router = layer.routers[ROUTER].weight
    assert router.requires_grad and router.grad is not None and router.grad.abs().sum() > 0
    assert all(layer.lora_A[e].weight.grad.abs().sum() > 0 for e in method.experts)  # every expert learns


def test_prisms_gating_multiplies_the_gate_into_both_factors():
    coin, prism = make(), make(gating="prism")
    layer, other = next(iter(prism.adapters.layers.values())), next(iter(coin.adapters.layers.values()))
    x = torch.randn(2, 3, layer.in_features)
    with torch.no_grad():
        gates = layer.routers[ROUTER](x)
        a = sum(gates[..., i:i + 1] * (x @ layer.lora_A[e].weight.T) for i, e in enumerate(prism.experts))
        b = sum(gates[..., i:i + 1] * (a @ layer.lora_B[e].weight.T) for i, e in enumerate(prism.experts))
        assert torch.allclose(layer(x), layer.base_layer(x) + layer.scaling["expert0"] * b, atol=1e-5)
        assert not torch.allclose(layer(x), other(x), atol=1e-4)  # the cross terms change the answer
