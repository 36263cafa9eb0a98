"""Injection into a tiny LLaVA, training only what should train, routing, state dicts."""

from __future__ import annotations

import pytest
import torch
from adapter_helpers import ATTN, ATTN_AND_FFN, FFN, build_tiny_llava, logits, perturb

from prism.adapters import AdapterSet, LoRALinear, inject_adapters, token_router
from prism.errors import CheckpointError, ConfigError


def test_injection_wraps_exactly_the_targets(inputs) -> None:
    model = build_tiny_llava()
    before = logits(model, inputs)
    adapters = inject_adapters(model, ATTN)
    assert len(adapters.layers) == 2 * 4
    assert all(p.startswith("model.language_model.layers.") for p in adapters.layers)
    assert not any(isinstance(m, LoRALinear) for m in model.model.vision_tower.modules())
    adapters.add_slot("t0", r=4, alpha=8, seed=0)
    assert torch.equal(logits(model, inputs), before)  # zero-init B: wrapping changes nothing


def test_injection_is_idempotent() -> None:
    model = build_tiny_llava()
    first = inject_adapters(model, ATTN)
    first.add_slot("t0", r=4, alpha=8, seed=0)
    again = inject_adapters(model, ATTN)
    assert again.layers == first.layers and again.slots == ["t0"]
    wider = inject_adapters(model, ATTN_AND_FFN)
    assert len(wider.layers) == 2 * 7
    assert all(wider.layers[p] is layer for p, layer in first.layers.items())
    assert wider.slot_layers("t0") == list(first.layers)
    assert not any(".base_layer." in p for p in wider.layers)
    assert AdapterSet(model).layers == wider.layers


def test_no_match_is_a_config_error_listing_paths() -> None:
    model = build_tiny_llava()
    with pytest.raises(ConfigError) as info:
        inject_adapters(model, r"model\.layers\.\d+\.q_proj")
    message = str(info.value)
    assert "matches no module path" in message and "model.language_model.layers.0.self_attn.q_proj" in message
    assert "hint:" in message
    with pytest.raises(ConfigError, match="no linear layer"):
        inject_adapters(model, r"model\.language_model\.layers\.\d+\.mlp")
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        inject_adapters(model, r"model\.(")


def test_training_changes_only_the_trainable_slot(inputs) -> None:
    model = build_tiny_llava()
    adapters = inject_adapters(model, ATTN_AND_FFN)
    adapters.add_slot("t0", r=4, alpha=8, seed=0)
    perturb(adapters, "t0")
    adapters.add_slot("t1", r=4, alpha=8, seed=1)
    adapters.set_trainable(["t1"])
    adapters.activate(["t0", "t1"])
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A.t1." in n or ".lora_B.t1." in n for n in trainable)
    assert adapters.num_trainable() == sum(p.numel() for p in adapters.parameters(["t1"]))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW(adapters.parameters(["t1"]), lr=1e-2)
    model.train()
    for _ in range(3):
        loss = model(**inputs, labels=inputs["input_ids"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".t1." in k for k in changed)
    assert any(".lora_A.t1." in k for k in changed) and any(".lora_B.t1." in k for k in changed)


def test_set_trainable_can_leave_the_rest_alone() -> None:
    model = build_tiny_llava()
    adapters = inject_adapters(model, FFN)
    adapters.add_slot("t0", r=2, alpha=4)
    adapters.set_trainable(["t0"], freeze_rest=False)
    assert model.model.multi_modal_projector.linear_1.weight.requires_grad
    adapters.freeze_base()
    assert not model.model.multi_modal_projector.linear_1.weight.requires_grad
    assert all(p.requires_grad for p in adapters.parameters(["t0"]))


def test_per_sample_routing_on_the_model_matches_single_slot_outputs(inputs) -> None:
    model = build_tiny_llava()
    adapters = inject_adapters(model, ATTN_AND_FFN)
    for k in range(3):
        adapters.add_slot(f"t{k}", r=2, alpha=4, seed=k)
        perturb(adapters, f"t{k}", seed=k)
    single = {}
    for k in range(3):
        adapters.activate([f"t{k}"])
        single[k] = logits(model, inputs)
    adapters.activate(["t0", "t1", "t2"])
    adapters.set_sample_weights(torch.eye(3)[[2, 0, 1]])
    routed = logits(model, inputs)
    for i, k in enumerate([2, 0, 1]):
        torch.testing.assert_close(routed[i], single[k][i], atol=1e-5, rtol=1e-5)
    # HiDe-LLaVA's shape: lower layers fuse every slot, only the top block routes per sample
    top = r"model\.language_model\.layers\.1\..*"
    adapters.activate(["t0", "t1", "t2"], [1 / 3] * 3)
    adapters.set_sample_weights(torch.eye(3), layers=top)
    assert logits(model, inputs).shape == routed.shape
    assert adapters.layers["model.language_model.layers.0.mlp.up_proj"].mix.sample is None


def test_token_router_trains_on_the_model(inputs) -> None:
    model = build_tiny_llava()
    adapters = inject_adapters(model, FFN)
    experts = [f"e{i}" for i in range(4)]
    for i, name in enumerate(experts):
        adapters.add_slot(name, r=2, alpha=8, seed=i)
        perturb(adapters, name, seed=i)  # with B = 0 every expert's output, so the gate's gradient, is 0
    adapters.activate(experts)
    adapters.set_router(token_router(4, seed=0))
    adapters.set_trainable(experts, routers=True)
    routers = [p for n, p in adapters.named_parameters(routers=True).items() if ".routers." in n]
    assert len(routers) == len(adapters.layers)
    model.train()
    model(**inputs, labels=inputs["input_ids"]).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in routers[-3:])
    assert "model.language_model.layers.0.mlp.up_proj.routers.router.weight" in adapters.state_dict()


def test_state_dict_round_trip_into_a_fresh_model(inputs) -> None:
    source = build_tiny_llava()
    adapters = inject_adapters(source, ATTN)
    adapters.add_slot("a", r=4, alpha=8, seed=0)
    adapters.add_slot("b", r=2, alpha=2, seed=1)
    perturb(adapters, "a", seed=1)
    perturb(adapters, "b", seed=2)
    state = adapters.state_dict()
    target = build_tiny_llava()
    fresh = inject_adapters(target, ATTN)
    fresh.add_slot("a", r=4, alpha=8, seed=5)
    fresh.add_slot("b", r=2, alpha=2, seed=5)
    assert fresh.load_state_dict(state) == ([], [])
    torch.testing.assert_close(logits(target, inputs), logits(source, inputs), atol=0, rtol=0)
    state_a = adapters.state_dict(["a"])
    assert all(".a." in k for k in state_a)
    assert fresh.load_state_dict(state_a, slots=["a"]) == ([], [])


def test_load_errors_name_the_key() -> None:
    model = build_tiny_llava()
    adapters = inject_adapters(model, ATTN)
    adapters.add_slot("a", r=4, alpha=8, seed=0)
    state = adapters.state_dict()
    key = "model.language_model.layers.0.self_attn.q_proj.lora_A.a.weight"

    bad_shape = dict(state)
    bad_shape[key] = torch.zeros(3, 128)
    snapshot = adapters.state_dict()
    with pytest.raises(CheckpointError, match=rf"{key}.*\(3, 128\).*\(4, 128\)"):
        adapters.load_state_dict(bad_shape)
    assert all(torch.equal(snapshot[k], v) for k, v in adapters.state_dict().items())  # nothing copied

    extra = {**state, "model.language_model.layers.0.self_attn.q_proj.lora_A.zzz.weight": state[key]}
    with pytest.raises(CheckpointError, match="1 unexpected key.*lora_A.zzz.weight"):
        adapters.load_state_dict(extra)
    partial = {k: v for k, v in state.items() if k != key}
    with pytest.raises(CheckpointError, match=rf"1 missing key.*{key}"):
        adapters.load_state_dict(partial)
    assert adapters.load_state_dict(partial, strict=False).missing == [key]


def test_describe_summarises_slots_routers_and_mixes() -> None:
    model = build_tiny_llava()
    adapters = inject_adapters(model, ATTN)
    adapters.add_slot("a", r=4, alpha=8)
    adapters.add_slot("b", r=2, alpha=4, layers=r".*q_proj")
    adapters.activate(["a", "b"], [0.5, 0.5], layers=r".*layers\.1\..*")
    info = adapters.describe()
    assert info["slots"]["a"] == {"r": 4, "alpha": 8.0, "dropout": 0.0, "use_rslora": False, "layers": 8}
    assert info["slots"]["b"]["layers"] == 2
    assert sorted(len(group["layers"]) for group in info["mix"]) == [4, 4]


def test_unwrap_restores_the_plain_model(inputs) -> None:
    model = build_tiny_llava()
    before = logits(model, inputs)
    names = [n for n, _ in model.named_parameters()]
    adapters = inject_adapters(model, ATTN)
    adapters.add_slot("a", r=2, alpha=4)
    perturb(adapters, "a")
    adapters.unwrap()
    assert [n for n, _ in model.named_parameters()] == names
    assert torch.equal(logits(model, inputs), before) and adapters.layers == {}
