"""smolora: the separable layer formula on hand-made values, per-token fusion weights that sum to one,
mask-aware visual pooling fixed at prefill through decoding, top-1 routers that learn, the state
through a checkpoint (refused with another encoder), the oracle option, and a run that records routing."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from prism.adapters.router_context import RouterContext
from prism.adapters.separable import FUSION, INSTRUCTION, INSTRUCTION_ROUTER, POOL_MASK, VISUAL, VisualRouter
from prism.benchmarks.synthetic import TASKS
from prism.methods.base import RunInfo, TaskContext
from prism.methods.forward import ForwardContext
from prism.methods.smolora import SMoLoRA, SMoLoRAParams, prompt_mask

SPECS = [t.spec for t in TASKS[:3]]
NAMES = [s.name for s in SPECS]
QUESTIONS = [t.question for t in TASKS[:3]]


def task(i: int) -> TaskContext:
    return TaskContext(index=i, spec=SPECS[i], sequence=SPECS, benchmark="synthetic")


def make(**params) -> SMoLoRA:
    from prism.backbones.llava import LlavaBackbone

    torch.manual_seed(0)
    backbone = LlavaBackbone().load(SimpleNamespace(model="builtin:tiny-llava", attn="auto"))
    method = SMoLoRA(SMoLoRAParams(**{"r": 8, "alpha": 16.0, "dropout": 0.0, **params}),
                     RunInfo(num_tasks=3, task_names=NAMES))
    method.attach(backbone)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # B is zero at creation: give every expert a visible update
        for layer in method.adapters.layers.values():
            for name in method.visual_experts + method.instruction_experts:
                layer.lora_B[name].weight.copy_(torch.randn(layer.lora_B[name].weight.shape, generator=gen))
    return method


def first(method):
    return next(iter(method.adapters.layers.values()))


def expert(layer, name, x):
    return layer.scaling[name] * (x @ layer.lora_A[name].weight.T @ layer.lora_B[name].weight.T)


def fake_fit(instructions):
    """A FitHandle whose one batch holds these instructions (smolora's end-of-task pass reads only them)."""
    return SimpleNamespace(batches=lambda limit=None, batch_size=None: iter([SimpleNamespace(instructions=instructions)]))


def test_defaults_are_the_published_settings_and_an_odd_expert_count_is_a_config_error(project):
    from prism.errors import ConfigError
    from tests.engine.conftest import resolve

    params = SMoLoRAParams()
    assert (params.r, params.alpha, params.num_experts, params.init_a) == (128, 256.0, 8, 0.01)
    assert SMoLoRA.config_defaults["train"]["lr"] == 1e-4
    method = make()
    layer = first(method)
    assert method.visual_experts == [f"visual{i}" for i in range(4)] and len(method.instruction_experts) == 4
    assert method.expert_rank == 1 and all(layer.scaling[e] == 16 / 8 for e in layer.slots)  # alpha / r_total
    assert layer.routers[INSTRUCTION_ROUTER].weight.shape == (4, method.encoder.dim)
    with pytest.raises(ConfigError, match="num_experts"):
        resolve(project, "method.smolora.num_experts=7", method__id="smolora")


def test_the_layer_output_is_the_separable_formula_for_the_chosen_experts():
    method = make()
    layer = first(method)
    d, dim = layer.in_features, method.encoder.dim
    x = torch.rand(2, 5, d) + 0.1  # positive: the hand-made visual router below picks expert 2
    z = torch.nn.functional.normalize(torch.randn(2, dim), dim=-1)
    with torch.no_grad():
        layer.routers[VISUAL].weight.zero_()
        layer.routers[VISUAL].weight[2] = 1.0  # logits: 0, 0, Σ pooled, 0
        layer.routers[INSTRUCTION_ROUTER].weight.zero_()
        layer.routers[INSTRUCTION_ROUTER].weight[1] = z[0]  # sample 0 scores expert 1 highest
        layer.routers[INSTRUCTION_ROUTER].weight[3] = z[1]  # sample 1 scores expert 3 highest
    layer.context = RouterContext(attention_mask=torch.ones(2, 5), sample={INSTRUCTION: z})
    out = layer(x)
    fusion = layer.routers[FUSION]
    expected = []
    for row, chosen in enumerate(("instruction1", "instruction3")):
        visual, instruction = expert(layer, "visual2", x[row]), expert(layer, chosen, x[row])
        scores = torch.cat([visual @ fusion.visual_score.T, instruction @ fusion.instruction_score.T], dim=-1)
        w = torch.softmax(scores, dim=-1)
        expected.append(layer.base_layer(x[row]) + w[:, :1] * visual + w[:, 1:] * instruction)
    assert torch.allclose(out, torch.stack(expected), atol=1e-5)


def test_fusion_weights_are_per_token_and_sum_to_one():
    method = make()
    layer = first(method)
    seen = []
    fusion = layer.routers[FUSION]
    fusion.register_forward_hook(lambda module, args, output: seen.append(output))
    z = torch.randn(2, method.encoder.dim)
    layer.context = RouterContext(attention_mask=torch.ones(2, 6), sample={INSTRUCTION: z})
    layer(torch.randn(2, 6, layer.in_features))
    weights = seen[-1]
    assert weights.shape == (2, 6, 2)
    assert torch.allclose(weights.sum(-1), torch.ones(2, 6), atol=1e-6)
    assert weights[0, :, 0].std() > 1e-4  # a weight per token, not one per sample


@pytest.mark.parametrize("side", ["left", "right"])
def test_visual_pooling_ignores_padding(side):
    method = make()
    layer = first(method)
    layer.eval()
    router = layer.routers[VISUAL]
    z = torch.randn(1, method.encoder.dim)
    x = torch.randn(1, 5, layer.in_features)

    def run(inputs, mask):
        layer.context = RouterContext(attention_mask=mask, sample={INSTRUCTION: z})
        return layer(inputs), router.chosen.clone()

    plain, chosen = run(x, torch.ones(1, 5))
    other = (int(chosen) + 1) % router.weight.shape[0]
    pads = 50.0 * router.weight[other].detach().expand(1, 3, -1)  # padding that would pull the mean elsewhere
    padded = torch.cat([pads, x] if side == "left" else [x, pads], dim=1)
    mask = torch.tensor([[0] * 3 + [1] * 5] if side == "left" else [[1] * 5 + [0] * 3])
    real = slice(3, 8) if side == "left" else slice(0, 5)
    out, chosen_padded = run(padded, mask)
    assert torch.equal(chosen_padded, chosen)
    assert torch.allclose(router.pooled(padded, layer.context), router.pooled(x, RouterContext()), atol=1e-6)
    assert torch.allclose(out[:, real], plain, atol=1e-5)
    _, naive = run(padded, None)  # what averaging every position (the release) would choose
    assert not torch.equal(naive, chosen)


def test_training_pools_over_the_prompt_only():
    mask = torch.tensor([[1, 1, 1, 1, 0], [0, 1, 1, 1, 1]])
    labels = torch.tensor([[-100, -100, 7, 8, -100], [-100, -100, -100, 5, 6]])
    assert prompt_mask(mask, labels).tolist() == [[1, 1, 0, 0, 0], [0, 1, 1, 0, 0]]
    router = VisualRouter(4, 2)
    x = torch.randn(2, 5, 4)
    context = RouterContext(attention_mask=mask, sample={POOL_MASK: prompt_mask(mask, labels)})
    assert torch.allclose(router.pooled(x, context), torch.stack([x[0, :2].mean(0), x[1, 1:3].mean(0)]), atol=1e-6)


def test_the_visual_expert_chosen_at_prefill_is_kept_at_every_decode_step(synthetic_data, monkeypatch):
    from prism.benchmarks.data import TaskDataset
    from prism.benchmarks.records import load_test_records
    from prism.engine.forward_plan import plan_forward

    method = make()
    records = load_test_records(synthetic_data, SPECS[0], max_samples=3)
    prompts = TaskDataset(records, backbone=method.backbone, root=synthetic_data, specs=SPECS[0], prompts=True)
    batch = next(iter(prompts.batches(3, shuffle=False)))
    calls: dict[int, list[tuple[int, torch.Tensor, torch.Tensor]]] = {}
    original = VisualRouter.forward

    def spy(self, x, context):
        gates = original(self, x, context)
        alone = (x[:, -1].float() @ self.weight.T).argmax(-1)  # the choice from the newest token alone
        calls.setdefault(id(self), []).append((x.shape[1], gates.argmax(-1), alone))
        return gates

    monkeypatch.setattr(VisualRouter, "forward", spy)
    model, tokenizer = method.backbone.model, method.backbone.tokenizer
    model.eval()
    plan = plan_forward(method, batch, ForwardContext("eval"))
    with torch.no_grad():
        model.generate(**batch.model_inputs(), max_new_tokens=4, min_new_tokens=4, do_sample=False,
                       pad_token_id=tokenizer.pad_token_id)
    assert len(calls) == len(method.adapters.layers)
    differs = False
    for steps in calls.values():
        prefill_length, prefill_choice, _ = steps[0]
        assert prefill_length > 1 and len(steps) == 4 and all(length == 1 for length, _, _ in steps[1:])
        assert all(torch.equal(choice, prefill_choice) for _, choice, _ in steps[1:])
        differs |= any(not torch.equal(alone, prefill_choice) for _, _, alone in steps[1:])
    assert differs  # re-choosing from the decoded token would have changed some choice
    details = plan.sample_details(len(batch))
    first_layer = next(iter(calls.values()))
    assert [row["experts"]["visual"][0] for row in details] == first_layer[0][1].tolist()


@pytest.mark.parametrize("mode", ["straight_through", "gate_value", "frozen"])
def test_the_instruction_router_picks_its_highest_score_and_routers_learn_unless_frozen(mode):
    method = make(router_training=mode)
    layer = first(method)
    router = layer.routers[INSTRUCTION_ROUTER]
    z = torch.nn.functional.normalize(torch.randn(2, method.encoder.dim), dim=-1)
    with torch.no_grad():
        router.weight.copy_(torch.stack([-z[0], z[1], -z[1], z[0]]))  # sample 0 -> expert 3, sample 1 -> expert 1
    context = RouterContext(attention_mask=torch.ones(2, 4), sample={INSTRUCTION: z})
    gates = router(context, 2)
    assert gates.argmax(-1).tolist() == [3, 1] and (gates > 0).sum(-1).tolist() == [1, 1]
    probs = torch.softmax(router.logits(z), -1)
    assert torch.allclose(gates.max(-1).values, probs.max(-1).values if mode == "gate_value" else torch.ones(2))
    assert method.instruction_choices(z)[:, 0].tolist() == [3, 1]
    x = torch.randn(2, 4, layer.in_features)
    branch = layer._gated_experts(method.instruction_experts, x, gates)
    scale = gates.max(-1).values.detach()[:, None, None]
    manual = torch.stack([expert(layer, "instruction3", x[0]), expert(layer, "instruction1", x[1])]) * scale
    assert torch.allclose(branch, manual, atol=1e-5)
    layer.train()
    layer.context = context
    layer(x).pow(2).sum().backward()
    for name in (VISUAL, INSTRUCTION_ROUTER):
        weight = layer.routers[name].weight
        if mode == "frozen":
            assert not weight.requires_grad and weight.grad is None
        else:
            assert weight.requires_grad and weight.grad is not None and weight.grad.abs().sum() > 0, name
    assert layer.routers[FUSION].visual_score.grad.abs().sum() > 0  # the fusion scores always learn


@pytest.mark.parametrize("when", ["first_task", "every_task"])
def test_routers_learn_on_the_first_task_and_are_frozen_afterwards_unless_every_task(when):
    method = make(train_routers=when, router_training="straight_through")
    layer = first(method)

    def trainable():
        return {name: layer.routers[name].weight.requires_grad for name in (VISUAL, INSTRUCTION_ROUTER)}

    method.begin_task(task(0))
    assert all(trainable().values())
    method.end_task(task(0), None)
    method.begin_task(task(1))
    assert set(trainable().values()) == {when == "every_task"}
    assert layer.routers[FUSION].visual_score.requires_grad and layer.lora_B["instruction0"].weight.requires_grad


def test_state_round_trip_oracle_and_refusal_with_another_encoder(monkeypatch):
    from prism.backbones import instruction_encoders
    from prism.errors import CheckpointError

    saved_by = make()
    for i in range(2):
        saved_by.begin_task(task(i))
        saved_by.end_task(task(i), fake_fit([QUESTIONS[i]] * 3))
    assert list(saved_by.tasks) == NAMES[:2] and saved_by.tasks[NAMES[0]].count == 3
    expected = saved_by.encoder.text_embeddings([QUESTIONS[0]])[0]
    assert torch.allclose(saved_by.tasks[NAMES[0]].embedding, expected, atol=1e-6)
    assert saved_by.tasks[NAMES[1]].signature == saved_by.instruction_choices(
        saved_by.encoder.text_embeddings([QUESTIONS[1]]))[0].tolist()
    tensors, metadata = saved_by.state_dict(), json.loads(json.dumps(saved_by.state_metadata()))
    loaded = make()
    loaded.load_state(tensors, metadata)
    for name in NAMES[:2]:
        assert torch.equal(loaded.tasks[name].embedding, saved_by.tasks[name].embedding)
        assert loaded.tasks[name].signature == saved_by.tasks[name].signature

    batch = _Sized(SimpleNamespace(input_ids=torch.zeros(2, 3, dtype=torch.long), instructions=[QUESTIONS[1]] * 2))
    loaded.prepare_inference(task(1))
    plan = loaded.prepare_forward(batch, ForwardContext("eval", oracle_task=NAMES[0]))
    assert torch.equal(plan.sample[INSTRUCTION], loaded.tasks[NAMES[0]].embedding.expand(2, -1))
    assert plan.routing_rows()[0][NAMES[0]] == 1.0  # the oracle's embedding follows task 0's signature
    assert plan.sample_details(2)[0]["experts"]["instruction_source"] == "task_oracle"
    plan = loaded.prepare_forward(batch, ForwardContext("eval"))
    assert plan.routing_rows()[0][NAMES[1]] == 1.0 and plan.sample_details(2)[0]["experts"]["instruction_source"] == "sample"
    with pytest.raises(ValueError, match="not learned"):
        loaded.prepare_forward(batch, ForwardContext("eval", oracle_task=NAMES[2]))

    other = json.loads(json.dumps(metadata))
    other["encoder"]["fingerprint"] = "another-tower"
    with pytest.raises(CheckpointError, match="instruction encoder"):
        make().load_state(tensors, other)

    class FakeSentenceModel:  # stands in for a SentenceTransformer: no package, no download
        def get_sentence_embedding_dimension(self):
            return 12

        def encode(self, texts, **kwargs):
            return torch.stack([torch.full((12,), float(len(t))) for t in texts])

    monkeypatch.setattr(instruction_encoders, "sentence_transformers_available", lambda: True)
    monkeypatch.setattr(instruction_encoders, "load_sentence_model", lambda source, **kw: FakeSentenceModel())
    sentence = make(instruction_encoder="auto")
    assert sentence.encoder.identity()["kind"] == "sentence-transformers" and sentence.encoder.dim == 12
    assert first(sentence).routers[INSTRUCTION_ROUTER].weight.shape == (4, 12)
    with pytest.raises(CheckpointError, match="instruction encoder is sentence-transformers"):
        sentence.load_state(tensors, metadata)  # CLIP-made embeddings into a sentence-encoder run

    def not_local(source, **kw):
        raise OSError("not in the cache")

    monkeypatch.setattr(instruction_encoders, "load_sentence_model", not_local)
    assert make(instruction_encoder="auto").encoder.identity()["kind"] == "clip"  # auto falls back, no download


class _Sized:
    """A batch stand-in with a length (prepare_forward reads instructions, input_ids and len)."""

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __len__(self):
        return int(self.inner.input_ids.shape[0])


def test_a_run_records_the_experts_and_routing_of_every_prediction(shared_run):
    from safetensors.torch import load_file

    project, resolved, _ = shared_run("benchmark.tasks='0-1'", method="smolora")
    folder = resolved.output_dir / "predictions" / "synthetic" / "smolora" / "Task1_llava"
    lines = [json.loads(line) for path in sorted(folder.glob("*.jsonl")) for line in path.read_text().splitlines()]
    lines = [line for line in lines if "question_id" in line]
    checkpoint = resolved.output_dir / "checkpoints" / "synthetic" / "smolora" / "Task1_llava"
    state = json.loads((checkpoint / "prism_state.json").read_text())["method_state"]
    layers = state["layers"]
    assert lines and layers > 0
    for line in lines:
        experts, routing = line["metadata"]["experts"], line["metadata"]["routing"]
        assert set(routing) == set(NAMES[:2]) and all(0.0 <= w <= 1.0 for w in routing.values())
        assert len(experts["instruction"]) == len(experts["visual"]) == layers
        assert all(0 <= e < 4 for e in experts["instruction"] + experts["visual"])
        assert experts["instruction_source"] == "sample"
    metrics = json.loads((resolved.output_dir / "results" / "synthetic" / "smolora" / "cl_metrics.json").read_text())
    assert set(metrics["routing_accuracy"]) == set(NAMES[:2])
    assert list(state["tasks"]) == NAMES[:2] and state["encoder"]["kind"] == "clip"
    assert all(len(info["signature"]) == layers and info["count"] == 48 for info in state["tasks"].values())
    tensors = load_file(str(checkpoint / "prism_state.safetensors"))
    assert {f"instruction_embedding.{name}" for name in NAMES[:2]} <= set(tensors)
    adapters = load_file(str(checkpoint / "adapter_model.safetensors"))
    for router in (VISUAL, INSTRUCTION_ROUTER, FUSION):
        assert any(f".routers.{router}." in key for key in adapters), router


def test_the_routers_keep_their_seeded_initialisation_by_default():
    """The release's routers (constant one-hot gates) never learn; prism's default follows it."""
    method = make()
    assert method.params.router_training == "frozen"
    method.begin_task(SimpleNamespace(index=0))
    layer = first(method)
    assert not any(layer.routers[name].weight.requires_grad for name in (VISUAL, INSTRUCTION_ROUTER))
    assert layer.routers[FUSION].visual_score.requires_grad
