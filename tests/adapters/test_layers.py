"""LoRALinear and mixing on a toy model: init, arithmetic, fixed/per-sample/per-token mixes, dtypes."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from prism.adapters import AdapterSet, LoRALinear, SlotSpec, TokenRouter, inject_adapters, token_router


class Toy(nn.Module):
    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Linear(6, 5, dtype=dtype)
        self.other = nn.Linear(5, 5, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def toy_with_slots(*slots: str, r: int = 2, alpha: float = 4.0) -> tuple[Toy, AdapterSet, LoRALinear]:
    model = Toy()
    adapters = inject_adapters(model, "proj")
    for i, name in enumerate(slots):
        adapters.add_slot(name, r=r, alpha=alpha, seed=i)
        with torch.no_grad():
            adapters.layers["proj"].lora_B[name].weight.normal_(generator=torch.Generator().manual_seed(10 + i))
    return model, adapters, adapters.layers["proj"]


def x_batch(batch: int = 3, seq: int = 4) -> torch.Tensor:
    return torch.randn(batch, seq, 6, generator=torch.Generator().manual_seed(5))


def test_wrapping_and_zero_init_change_nothing() -> None:
    model = Toy()
    x = x_batch()
    before = model(x)
    adapters = inject_adapters(model, "proj")
    adapters.add_slot("t0", r=2, alpha=4, seed=0)
    assert torch.equal(model(x), before)
    layer = adapters.layers["proj"]
    assert torch.count_nonzero(layer.lora_B["t0"].weight) == 0
    assert layer.lora_A["t0"].weight.abs().max() <= 1 / math.sqrt(6)  # kaiming-uniform(a=√5) bound
    assert layer.weight is layer.base_layer.weight  # code reading proj.weight keeps working


def test_parameter_names_are_peft_in_memory_names() -> None:
    model, adapters, _ = toy_with_slots("t0")
    names = {n for n, _ in model.named_parameters()}
    assert {"proj.base_layer.weight", "proj.base_layer.bias", "proj.lora_A.t0.weight", "proj.lora_B.t0.weight"} <= names
    assert set(adapters.state_dict()) == {"proj.lora_A.t0.weight", "proj.lora_B.t0.weight"}


def test_init_is_seeded_and_leaves_global_rng_alone() -> None:
    a, b = Toy(), Toy()
    sa, sb = inject_adapters(a, "proj"), inject_adapters(b, "proj")
    state = torch.get_rng_state()
    sa.add_slot("t0", r=3, alpha=6, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    sb.add_slot("t0", r=3, alpha=6, generator=torch.Generator().manual_seed(7))
    assert torch.equal(sa.layers["proj"].lora_A["t0"].weight, sb.layers["proj"].lora_A["t0"].weight)
    sb.add_slot("t1", r=3, alpha=6, seed=8)
    assert not torch.equal(sb.layers["proj"].lora_A["t1"].weight, sb.layers["proj"].lora_A["t0"].weight)


def test_single_slot_is_lora_arithmetic_and_delta_weight() -> None:
    model, _, layer = toy_with_slots("t0", r=2, alpha=6.0)
    x = x_batch()
    base = layer.base_layer(x)
    expected = base + layer.lora_B["t0"](layer.lora_A["t0"](x)) * (6.0 / 2)
    assert torch.equal(model(x), expected)
    torch.testing.assert_close(model(x) - base, x @ layer.delta_weight("t0").T)


def test_rslora_scaling() -> None:
    assert SlotSpec(r=16, alpha=8.0, use_rslora=True).scaling == pytest.approx(8 / 4)
    assert SlotSpec(r=16, alpha=8.0).scaling == pytest.approx(0.5)


def test_fixed_weights_scale_the_delta_linearly() -> None:
    model, adapters, layer = toy_with_slots("a", "b")
    x = x_batch()
    base = layer.base_layer(x)
    delta = {s: layer.slot_delta(s, x) for s in ("a", "b")}
    adapters.activate(["a"], [2.5])
    torch.testing.assert_close(model(x) - base, 2.5 * delta["a"])
    adapters.activate({"a": 0.5, "b": -1.0})
    torch.testing.assert_close(model(x) - base, 0.5 * delta["a"] - delta["b"])
    adapters.activate(["a", "b"], {"b": 0.0})
    torch.testing.assert_close(model(x) - base, delta["a"])
    adapters.activate([])
    assert torch.equal(model(x), base)
    adapters.clear_mix()  # default: every slot summed with weight 1 (O-LoRA's inference)
    torch.testing.assert_close(model(x) - base, delta["a"] + delta["b"])


def test_per_sample_weights_route_each_sample_to_its_slot() -> None:
    model, adapters, _ = toy_with_slots("a", "b", "c")
    x = x_batch(batch=3)
    single = {}
    for s in ("a", "b", "c"):
        adapters.activate([s])
        single[s] = model(x)
    adapters.activate(["a", "b", "c"])
    adapters.set_sample_weights(torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    out = model(x)
    for i, s in enumerate(["c", "a", "b"]):
        torch.testing.assert_close(out[i], single[s][i])
    # soft weights are a per-sample linear combination of the slots' deltas
    base = adapters.layers["proj"].base_layer(x)
    w = torch.tensor([[0.2, 0.3, 0.5]] * 3)
    adapters.set_sample_weights(w)
    expected = base + sum(w[:, k, None, None] * (single[s] - base) for k, s in enumerate("abc"))
    torch.testing.assert_close(model(x), expected)


def test_sample_weight_shape_errors_name_the_layer() -> None:
    model, adapters, _ = toy_with_slots("a", "b")
    adapters.activate(["a", "b"])
    with pytest.raises(ValueError, match="proj.*3 columns"):
        adapters.set_sample_weights(torch.ones(2, 3))
    adapters.set_sample_weights(torch.ones(4, 2))
    with pytest.raises(ValueError, match=r"proj: per-sample weights have shape \(4, 2\)"):
        model(x_batch(batch=3))


def test_token_router_mix_has_no_cross_terms_and_gets_gradients() -> None:
    model, adapters, layer = toy_with_slots("e0", "e1", "e2")
    adapters.activate(["e0", "e1", "e2"])
    adapters.set_router(token_router(3, seed=0))
    adapters.set_trainable(["e0", "e1", "e2"], routers=True)
    router = layer.routers["router"]
    assert isinstance(router, TokenRouter)
    assert "proj.routers.router.weight" in dict(model.named_parameters())
    x = x_batch()
    out = model(x)
    gates = torch.softmax(x @ router.weight.T, dim=-1)
    expected = layer.base_layer(x) + sum(gates[..., i : i + 1] * layer.slot_delta(f"e{i}", x) for i in range(3))
    torch.testing.assert_close(out, expected)  # Σ g_i B_i A_i x, no g_i g_j terms
    out.square().sum().backward()
    assert router.weight.grad is not None and router.weight.grad.abs().sum() > 0
    assert all(layer.lora_A[f"e{i}"].weight.grad is not None for i in range(3))
    assert layer.base_layer.weight.grad is None


def test_top_k_router_keeps_k_gates() -> None:
    router = TokenRouter(6, 4, top_k=2, generator=torch.Generator().manual_seed(0))
    gates = router(x_batch())
    assert ((gates > 0).sum(-1) == 2).all()
    torch.testing.assert_close(gates.sum(-1), torch.ones(gates.shape[:-1]))


def test_router_output_shape_is_checked() -> None:
    model, adapters, _ = toy_with_slots("a", "b")
    adapters.activate(["a", "b"])
    adapters.set_router(lambda layer: TokenRouter(layer.in_features, 3))
    with pytest.raises(ValueError, match="router 'router' returned shape"):
        model(x_batch())


def test_delta_fn_replaces_the_weighted_sum() -> None:
    model, adapters, layer = toy_with_slots("a", "b")
    x = x_batch()

    def only_b_doubled(lyr: LoRALinear, inp: torch.Tensor) -> torch.Tensor:
        return 2 * lyr.slot_delta("b", inp)

    adapters.set_delta_fn(only_b_doubled)
    torch.testing.assert_close(model(x), layer.base_layer(x) + 2 * layer.slot_delta("b", x))
    adapters.set_delta_fn(None)
    torch.testing.assert_close(model(x), layer.base_layer(x) + layer.slot_delta("a", x) + layer.slot_delta("b", x))


def test_slot_missing_in_a_layer_keeps_its_column() -> None:
    model = Toy()
    adapters = inject_adapters(model, "proj|other")
    adapters.add_slot("a", r=2, alpha=2, seed=0)
    adapters.add_slot("b", r=2, alpha=2, seed=1, layers="other")
    assert adapters.slot_layers("b") == ["other"]
    adapters.activate(["a", "b"])
    adapters.set_sample_weights(torch.ones(3, 2))
    model(x_batch())


def test_half_precision_base_with_float32_adapters() -> None:
    model = Toy(dtype=torch.bfloat16)
    adapters = inject_adapters(model, "proj")
    adapters.add_slot("t0", r=2, alpha=4, seed=0)
    layer = adapters.layers["proj"]
    assert layer.lora_A["t0"].weight.dtype == torch.float32
    with torch.no_grad():
        layer.lora_B["t0"].weight.fill_(0.1)
    x = x_batch().to(torch.bfloat16)
    out = model(x)
    assert out.dtype == torch.bfloat16
    expected = (layer.base_layer(x).float() + layer.slot_delta("t0", x.float())).to(torch.bfloat16)
    assert torch.equal(out, expected)
    adapters.activate(["t0"], [0.5])
    assert model(x).dtype == torch.bfloat16
    adapters.add_slot("t1", r=2, alpha=4, seed=1, dtype=torch.bfloat16)
    assert layer.lora_B["t1"].weight.dtype == torch.bfloat16


def test_dropout_only_in_training() -> None:
    model = Toy()
    adapters = inject_adapters(model, "proj")
    adapters.add_slot("t0", r=2, alpha=4, dropout=0.5, seed=0)
    with torch.no_grad():
        adapters.layers["proj"].lora_B["t0"].weight.fill_(1.0)
    x = x_batch()
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    torch.manual_seed(0)
    assert not torch.equal(model(x), model.eval()(x))


def test_slot_bookkeeping_errors() -> None:
    model, adapters, layer = toy_with_slots("a")
    with pytest.raises(ValueError, match="already exists"):
        adapters.add_slot("a", r=2, alpha=4)
    adapters.add_slot("a", r=2, alpha=4.0, exist_ok=True)
    with pytest.raises(ValueError, match="invalid slot name"):
        adapters.add_slot("a.b", r=2, alpha=4)
    with pytest.raises(ValueError, match="unknown adapter slot"):
        adapters.activate(["nope"])
    with pytest.raises(ValueError, match="selects none"):
        adapters.activate(["a"], layers=r"missing\..*")
    adapters.add_slot("b", r=4, alpha=4)
    assert adapters.slots == ["a", "b"] and adapters.spec("b").r == 4
    adapters.remove_slot("a")
    assert adapters.slots == ["b"] and "a" not in layer.lora_A


def test_wrappers_slots_and_routers_follow_the_models_mode() -> None:
    model = Toy().eval()
    adapters = inject_adapters(model, "proj")
    adapters.add_slot("t0", r=2, alpha=4, dropout=0.5, seed=0)
    adapters.set_router(token_router(1))
    layer = adapters.layers["proj"]
    assert not any(m.training for m in layer.modules())  # no dropout at inference after injecting
    model.train()
    assert all(m.training for m in layer.modules())


class FakeInt8Linear(nn.Linear):
    """Stands in for bitsandbytes' Linear8bitLt: an integer weight that only its own forward can use."""

    def __init__(self, source: nn.Linear) -> None:
        super().__init__(source.in_features, source.out_features, bias=False, device="meta")
        self.scale = source.weight.detach().abs().max() / 127
        self.weight = nn.Parameter(torch.round(source.weight.detach() / self.scale).to(torch.int8), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ (self.weight.float() * self.scale).T


def test_quantised_base_is_only_called() -> None:
    model = Toy()
    model.proj = FakeInt8Linear(model.proj)
    x = x_batch()
    base = model(x)
    adapters = inject_adapters(model, "proj")
    adapters.add_slot("t0", r=2, alpha=4, seed=0)
    layer = adapters.layers["proj"]
    assert layer.lora_A["t0"].weight.dtype == torch.float32
    with torch.no_grad():
        layer.lora_B["t0"].weight.fill_(0.1)
    adapters.set_trainable(["t0"])
    out = model(x)
    torch.testing.assert_close(out, base + layer.slot_delta("t0", x))
    out.sum().backward()
    assert layer.lora_A["t0"].weight.grad is not None
    assert layer.base_layer.weight.dtype == torch.int8


def test_batch_level_router_broadcasts() -> None:
    """A gate shared by the whole batch (SAME's batch-mean gate) may return [1, n_active]."""

    class BatchMean(nn.Module):
        def __init__(self, layer: LoRALinear) -> None:
            super().__init__()
            self.inner = TokenRouter(layer.in_features, 2, generator=torch.Generator().manual_seed(0))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x).mean(dim=(0, 1)).unsqueeze(0)

    model, adapters, layer = toy_with_slots("a", "b")
    adapters.activate(["a", "b"])
    adapters.set_router(BatchMean, name="batch")
    x = x_batch()
    gates = layer.routers["batch"](x)[0]
    expected = layer.base_layer(x) + gates[0] * layer.slot_delta("a", x) + gates[1] * layer.slot_delta("b", x)
    torch.testing.assert_close(model(x), expected)
    adapters.set_router(None)
    assert layer.mix.router is None and "batch" in layer.routers
