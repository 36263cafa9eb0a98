"""same: the router gradient projected onto the inputs' principal subspace and rescaled, experts
preconditioned by the earlier tasks' curvature, frozen experts untouched, statistics counted once."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

import torch

from prism.benchmarks.synthetic import TASKS
from prism.methods.base import RunInfo, TaskContext
from prism.methods.forward import ForwardContext
from prism.methods.same import ROUTER, SAME, SAMEParams, principal

SPECS = [t.spec for t in TASKS[:3]]


def task(i):
    return TaskContext(index=i, spec=SPECS[i], sequence=SPECS, benchmark="synthetic")


def make(**params):
    from prism.backbones.llava import LlavaBackbone

    torch.manual_seed(0)
    backbone = LlavaBackbone().load(SimpleNamespace(model="builtin:tiny-llava", attn="auto"))
    method = SAME(SAMEParams(**{"r": 6, "alpha": 12.0, "dropout": 0.0, "max_components": 8, **params}),
                  RunInfo(num_tasks=3, task_names=[s.name for s in SPECS]))
    method.attach(backbone)
    return method


def first(method):
    layer = next(iter(method.adapters.layers.values()))
    return layer, layer.routers[ROUTER]


def train_forward(method, layer, x):
    method.prepare_forward(None, ForwardContext("train"))
    layer.train()
    return layer(x)


def low_rank_inputs(d, n=64, rank=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(d, rank, generator=gen))[0]
    scales = torch.tensor([5.0, 2.0, 1.0])[:rank]
    return (torch.randn(1, n, rank, generator=gen) * scales) @ basis.T, basis


def test_the_router_gradient_is_projected_onto_the_principal_subspace_and_rescaled():
    method = make()
    method.begin_task(task(0))
    layer, router = first(method)
    with torch.no_grad():  # B = 0 would make the gates irrelevant to the output (no router gradient)
        for name in method.experts:
            layer.lora_B[name].weight.normal_()
    x, _ = low_rank_inputs(layer.in_features)
    train_forward(method, layer, x).pow(2).sum().backward()
    raw = router.weight.grad.clone()
    method.on_gradients(task(0), {})
    u, s = principal(router.task_sketch, float(router.task_count), 0.9)
    assert float(router.task_count) == 64 and u.shape[1] <= 3  # this step's 64 tokens, a rank-3 input
    smooth = torch.stack([s[max(0, i - 2): i + 1].mean() for i in range(len(s))])
    scale = (1 / smooth) / (1 / smooth).max()
    expected = ((raw @ u) * scale) @ u.T
    projected = router.weight.grad
    assert torch.allclose(projected, expected, atol=1e-5)
    outside = projected - projected @ u @ u.T
    assert outside.norm() < 1e-5 * projected.norm()
    assert (raw - raw @ u @ u.T).norm() > 1e-3 * raw.norm()  # the raw gradient had a part outside


def test_experts_are_preconditioned_by_the_earlier_tasks_curvature():
    method = make()
    method.begin_task(task(0))
    layer, router = first(method)
    x, _ = low_rank_inputs(layer.in_features)
    train_forward(method, layer, x)
    method.on_gradients(task(0), {})
    method.end_task(task(0), None)
    method.begin_task(task(1))
    u, s = principal(router.prev_sketch, float(router.prev_count), 0.9)
    with torch.no_grad():
        for name in method.experts:
            layer.lora_B[name].weight.normal_()  # B = 0 would leave A without gradient
    method.prepare_forward(None, ForwardContext("train"))
    layer(torch.randn(1, 16, layer.in_features)).sum().backward()
    raw = {n: layer.lora_A[n].weight.grad.clone() for n in method.experts}
    method.on_gradients(task(1), {})
    for name in method.experts:
        g = raw[name]
        inside = g @ u
        expected = (inside / (s + 0.9)) @ u.T + (g - inside @ u.T) / 0.9
        assert torch.allclose(layer.lora_A[name].weight.grad, expected, atol=1e-5), name


def test_a_frozen_expert_does_not_change_and_the_current_tasks_expert_always_trains():
    method = make()
    method.begin_task(task(1))  # expert1 is the current task's
    layer, router = first(method)
    for _, r in method.layers():
        r.utilisation.copy_(torch.tensor([0.2, 0.1, 0.5]))
        r.importance.copy_(torch.tensor([0.9, 0.9, 0.1]))  # scores: experts 0 and 1 low, 2 high
    method.after_step(task(1), 1)
    assert router.masks.tolist() == [0.0, 1.0, 1.0]  # expert 1 kept although its score is low
    params = method.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=0.1)
    with torch.no_grad():
        for name in method.experts:
            layer.lora_B[name].weight.normal_()
    before = {n: (layer.lora_A[n].weight.clone(), layer.lora_B[n].weight.clone()) for n in method.experts}
    for _ in range(2):
        optimizer.zero_grad()
        train_forward(method, layer, torch.randn(2, 5, layer.in_features)).pow(2).sum().backward()
        method.on_gradients(task(1), {})
        optimizer.step()
    gates = router.gates(torch.randn(1, 2, layer.in_features))
    assert torch.all(gates[..., 0] == 0)  # masked out of the routing
    assert torch.equal(layer.lora_A["expert0"].weight, before["expert0"][0])
    assert torch.equal(layer.lora_B["expert0"].weight, before["expert0"][1])
    for name in ("expert1", "expert2"):
        assert not torch.equal(layer.lora_B[name].weight, before[name][1])


def test_statistics_count_once_per_step_not_in_recomputation_or_end_of_task_passes():
    from torch.utils.checkpoint import checkpoint

    method = make()
    method.begin_task(task(0))
    layer, router = first(method)
    x = torch.randn(1, 7, layer.in_features, requires_grad=True)
    method.prepare_forward(None, ForwardContext("train"))
    layer.train()
    checkpoint(layer, x, use_reentrant=False).sum().backward()  # forward again inside backward
    rows = x.detach().reshape(-1, layer.in_features)
    assert router.pending["tokens"] == 7 and torch.allclose(router.pending["gram"], rows.T @ rows, atol=1e-4)
    method.prepare_forward(None, ForwardContext("end_task"))
    layer(x)
    assert router.pending["tokens"] == 7
    method.on_gradients(task(0), {})
    assert float(router.task_count) == 7 and router.pending["tokens"] == 0
    sketch = router.task_sketch
    top = torch.linalg.eigh(rows.T @ rows).eigenvalues.flip(0)[:sketch.shape[1]]
    assert torch.allclose((sketch.T @ sketch).diagonal(), top, rtol=1e-3, atol=1e-3)  # the step's Gram, top-q


def test_inference_gates_each_sample_by_its_prompt_mean_top_2():
    from prism.adapters.router_context import RouterContext

    method = make()
    layer, router = first(method)
    layer.eval()
    x = torch.randn(2, 4, layer.in_features)
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    context = RouterContext(attention_mask=mask)
    gates = router(x, context)
    mean = torch.stack([router.gates(x[0, 1:]).mean(0), router.gates(x[1]).mean(0)])
    kept, index = mean.topk(2, dim=-1)
    expected = torch.zeros_like(mean).scatter(-1, index, kept / kept.sum(-1, keepdim=True))
    assert torch.allclose(gates, expected, atol=1e-6) and (gates > 0).sum(-1).tolist() == [2, 2]
    context.calls = 1  # a decode step reuses the prompt's gate
    assert torch.equal(router(torch.randn(2, 1, layer.in_features), context), gates)


def test_a_task_resumed_from_a_step_checkpoint_continues_with_the_same_statistics(synthetic_data, tmp_path,
                                                                                  monkeypatch):
    from safetensors.torch import load_file

    from prism.engine import step_checkpoint
    from prism.engine.loop import train
    from tests.engine.conftest import new_project, resolve

    sets = ("benchmark.tasks='0'", "train.save_every_steps=2", "method.same.r=6", "method.same.alpha=12.0")

    def adapters(project):
        folder = project / "outputs" / "checkpoints" / "synthetic" / "same" / "Task0_llava"
        return load_file(str(folder / "adapter_model.safetensors"))

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    uninterrupted = new_project(tmp_path / "a", synthetic_data)
    train(resolve(uninterrupted, *sets, method__id="same"))

    class Stop(Exception):
        pass

    original = step_checkpoint.StepCheckpointer.save

    def save_then_stop(self, state):
        original(self, state)
        if state.step == 4:
            raise Stop

    stopped = new_project(tmp_path / "b", synthetic_data)
    monkeypatch.setattr(step_checkpoint.StepCheckpointer, "save", save_then_stop)
    with pytest.raises(Stop):
        train(resolve(stopped, *sets, method__id="same"))
    monkeypatch.setattr(step_checkpoint.StepCheckpointer, "save", original)
    saved = load_file(str(stopped / "outputs" / "checkpoints" / "synthetic" / "same" / "steps" / "Task0_llava"
                          / step_checkpoint.TENSORS))
    assert any(key.startswith("method.") and key.endswith("task_sketch") for key in saved)
    train(resolve(stopped, *sets, method__id="same"))
    mine, theirs = adapters(stopped), adapters(uninterrupted)
    assert mine.keys() == theirs.keys() and any(".routers.router.utilisation" in key for key in mine)
    for key in theirs:  # weights and the routers' sketches, EMAs and masks
        assert torch.allclose(mine[key], theirs[key], atol=1e-6), key


def test_layers_reading_one_input_share_its_statistics_yet_each_gets_its_own_result():
    """gate/up read one tensor: its Gram is computed once and their sketches decomposed once (q/k/v
    likewise), yet every router's sketch and projected gradient are those of its own inputs."""
    from prism.adapters.layers import LoRALinear
    from prism.adapters.router_context import open_router_context
    from prism.methods.same_fold import equal_updates
    from prism.methods.spectral import dense_sketch

    method = make()
    method.begin_task(task(0))
    model = method.backbone.model.model.language_model
    with torch.no_grad():
        for layer, _ in method.layers():
            for name in method.experts:
                layer.lora_B[name].weight.normal_(std=0.1)
    inputs = {}

    def record(module, args):
        inputs[module] = args[0].detach()

    hooks = [module.register_forward_pre_hook(record) for module in model.modules() if isinstance(module, LoRALinear)]
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, -3:] = 0  # padding: its rows are not counted
    method.prepare_forward(None, ForwardContext("train"))
    model.train()
    open_router_context(model, attention_mask=mask)
    embeds = torch.randn(2, 9, model.config.hidden_size)
    model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state.pow(2).sum().backward()
    for hook in hooks:
        hook.remove()
    routers = [router for _, router in method.layers()]
    assert len({id(router.pending["gram"]) for router in routers}) < len(routers)  # one Gram per input
    raw = [router.weight.grad.clone() for router in routers]
    steps = [(router.task_sketch[:, :0], router.pending["gram"]) for router in routers]
    for router in routers:
        router.step_history = tuple(router.pending["history"])
    assert len(equal_updates(routers, steps)) < len(routers)  # decomposed once per input
    method.on_gradients(task(0), {})
    for (layer, router), grad in zip(method.layers(), raw):
        rows = inputs[layer].reshape(-1, layer.in_features)[mask.reshape(-1).bool()]
        own = dense_sketch(rows.T @ rows, router.q)
        assert float(router.task_count) == rows.shape[0]
        assert torch.allclose(router.task_sketch @ router.task_sketch.T, own @ own.T, atol=1e-3), layer.path
        u, s = principal(own, rows.shape[0], 0.9)
        smooth = torch.stack([s[max(0, i - 2): i + 1].mean() for i in range(len(s))])
        expected = ((grad @ u) * ((1 / smooth) / (1 / smooth).max())) @ u.T
        assert torch.allclose(router.weight.grad, expected, atol=1e-5, rtol=1e-4), layer.path
