"""clmoe: usage counted over real tokens, the dual-momentum merge by the published rule, and the
task-level gate of the prototype-estimated task added to the instance router's."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from prism.benchmarks.synthetic import TASKS
from prism.methods.base import RunInfo, TaskContext
from prism.methods.clmoe import ROUTER, TASK, CLMoE, CLMoEParams
from prism.methods.forward import ForwardContext

SPECS = [t.spec for t in TASKS[:2]]
NAMES = [s.name for s in SPECS]


def task(i):
    return TaskContext(index=i, spec=SPECS[i], sequence=SPECS, benchmark="synthetic")


def make(**params):
    from prism.backbones.llava import LlavaBackbone

    torch.manual_seed(0)
    backbone = LlavaBackbone().load(SimpleNamespace(model="builtin:tiny-llava", attn="auto"))
    method = CLMoE(CLMoEParams(**{"dropout": 0.0, **params}), RunInfo(num_tasks=2, task_names=NAMES))
    method.attach(backbone)
    return method


def usage(method, *top):
    """[layers, E] counts where every layer used experts ``top`` most."""
    counts = torch.ones(len(method.adapters.layers), method.params.num_experts)
    counts[:, list(top)] = 10.0
    return counts


def test_usage_counts_each_real_tokens_top_k_experts():
    method = make()
    router = method.routers()[0]
    router.recording, router.usage, router.top_k_used = True, None, 2
    x = torch.randn(2, 3, router.in_features)
    mask = torch.tensor([[1, 1, 1], [0, 1, 1]])  # one padding position
    router(x, SimpleNamespace(attention_mask=mask, sample={}))
    gates = torch.softmax(x @ router.weight.T, dim=-1)
    expected = torch.zeros(4)
    for b, s in [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2)]:
        expected[gates[b, s].topk(2).indices] += 1
    assert torch.equal(router.usage, expected) and router.usage.sum() == 10


def test_the_merge_moves_each_expert_by_the_published_momentum():
    method = make()
    method.begin_task(task(0))
    method.usage[NAMES[0]] = usage(method, 0, 1)  # the old task used experts 0 and 1
    method.begin_task(task(1))  # snapshot of θ_old
    old = {k: v.clone() for k, v in method.old.items()}
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():  # "training" moves every expert
        for param in method.adapters.parameters(method.experts):
            param.add_(torch.randn(param.shape, generator=gen))
    new = {k: v.detach().clone() for k, v in method.adapters.named_parameters(method.experts).items()}
    method.usage[NAMES[1]] = usage(method, 1, 2)  # the new task used experts 1 and 2
    method.merge(NAMES[1])
    merged = method.adapters.named_parameters(method.experts)
    for key, value in merged.items():
        expert = int(key.split(".expert")[1].split(".")[0])
        keep = 0.3 if expert == 0 else 0.7  # expert 0 served the old task only
        assert torch.allclose(value, keep * old[key] + (1 - keep) * new[key], atol=1e-6), key


def test_a_prototype_routes_a_tasks_samples_to_its_experts():
    method = make()
    for i, top in enumerate([(0, 1), (2, 3)]):
        method.usage[NAMES[i]] = usage(method, *top)
    dim = method.anchors["text"].dim
    for i in range(2):
        method.anchors["text"].add(NAMES[i], torch.nn.functional.one_hot(torch.tensor([i]), dim).float())
    text = torch.zeros(2, dim)
    text[0, :2] = torch.tensor([0.2, 1.0])  # nearer task 1's prototype
    text[1, :2] = torch.tensor([1.0, 0.1])  # nearer task 0's
    text = torch.nn.functional.normalize(text, dim=-1)
    method.features = SimpleNamespace(text_features=lambda b: text, image_features=lambda b: (
        torch.zeros(2, method.anchors["image"].dim), torch.zeros(2, dtype=torch.bool)))
    method.prepare_inference(task(1))
    batch = SimpleNamespace(__len__=lambda self: 2)
    plan = method.prepare_forward(batch, ForwardContext("eval"))
    assert plan.sample[TASK].tolist() == [1, 0] and plan.routing_slots == tuple(NAMES)
    router = method.routers()[0]
    x = torch.randn(2, 3, router.in_features)
    gates = router(x, SimpleNamespace(attention_mask=None, sample=plan.sample))
    instance = torch.softmax(x @ router.weight.T, dim=-1)
    prior = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 0.0, 0.0]]).unsqueeze(1)  # task 1, then task 0
    assert torch.allclose(gates, 0.5 * instance + 0.5 * prior, atol=1e-6)
    method.begin_task(task(1))  # training: the instance router alone
    assert torch.allclose(router(x, SimpleNamespace(attention_mask=None, sample=plan.sample)), instance, atol=1e-6)


def test_usage_and_prototypes_survive_a_checkpoint():
    import json

    saved_by = make()
    saved_by.usage[NAMES[0]] = usage(saved_by, 0, 1)
    saved_by.anchors["text"].add(NAMES[0], torch.ones(1, saved_by.anchors["text"].dim))
    loaded = make()
    loaded.load_state(saved_by.state_dict(), json.loads(json.dumps(saved_by.state_metadata())))
    assert torch.equal(loaded.usage[NAMES[0]], saved_by.usage[NAMES[0]])
    assert torch.equal(loaded.anchors["text"].matrix(), saved_by.anchors["text"].matrix())
    assert ROUTER in next(iter(loaded.adapters.layers.values())).routers
