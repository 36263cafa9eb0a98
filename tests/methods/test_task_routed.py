"""hide_llava and disco: the published routing formulas on hand-made anchors, the layer mixes they
install, what trains, anchors through a checkpoint (and refused with another tower), and a run
through the engine with beam search and per-sample routing."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from prism.benchmarks.synthetic import TASKS
from prism.methods.base import RunInfo, TaskContext
from prism.methods.disco import DisCo
from prism.methods.forward import ForwardContext
from prism.methods.hide_llava import HiDeLLaVA

SPECS = [t.spec for t in TASKS[:3]]
NAMES = [s.name for s in SPECS]


def task(i: int) -> TaskContext:
    return TaskContext(index=i, spec=SPECS[i], sequence=SPECS, benchmark="synthetic")


def make(cls, **params):
    from prism.backbones.llava import LlavaBackbone

    torch.manual_seed(0)
    backbone = LlavaBackbone().load(SimpleNamespace(model="builtin:tiny-llava", attn="auto"))
    method = cls(cls.Params(**{"r": 6, "alpha": 12.0, "dropout": 0.0, **params}),
                 RunInfo(num_tasks=3, task_names=NAMES))
    method.attach(backbone)
    return method


def learn(method, count: int) -> None:
    """Tasks 0..count-1 'learned': their slots exist with non-zero B (training itself is not under test)."""
    gen = torch.Generator().manual_seed(1)
    for i in range(count):
        method.begin_task(task(i))
        with torch.no_grad():
            for param in method.adapters.parameters([f"task{i}"]):
                param.copy_(torch.randn(param.shape, generator=gen) * 0.1)
        method.adapters.set_trainable([])


def unit(dim: int, *hot: int) -> torch.Tensor:
    v = torch.zeros(dim)
    for h in hot:
        v[h] = 1.0
    return torch.nn.functional.normalize(v, dim=0)


class _Batch(SimpleNamespace):
    def __len__(self):
        return self.n


def fake_features(method, image: torch.Tensor, has_image: torch.Tensor, text: torch.Tensor) -> None:
    method.features = SimpleNamespace(image_features=lambda batch: (image, has_image),
                                      text_features=lambda batch: text, text_encoder=method.features.text_encoder)


def hand_made_anchors(method) -> tuple[torch.Tensor, torch.Tensor]:
    """Task i's image anchor is e_i, its text anchor e_{i+3}; returns both [2, dim] matrices."""
    dim_image, dim_text = method.anchors["image"].dim, method.anchors["text"].dim
    images = torch.stack([unit(dim_image, 0), unit(dim_image, 1)])
    texts = torch.stack([unit(dim_text, 3), unit(dim_text, 4)])
    for i in range(2):
        method.anchors["image"].add(NAMES[i], torch.stack([images[i], images[i]]))  # a mean of equal rows
        method.anchors["text"].add(NAMES[i], texts[i:i + 1])
    return images, texts


def test_hide_top_layer_weights_are_the_published_softmax_of_anchor_similarities():
    method = make(HiDeLLaVA)
    learn(method, 2)
    images, texts = hand_made_anchors(method)
    torch.manual_seed(3)
    image = torch.nn.functional.normalize(torch.randn(3, images.shape[1]), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(3, texts.shape[1]), dim=-1)
    has_image = torch.tensor([True, True, False])
    fake_features(method, image, has_image, text)
    method.prepare_inference(task(1))
    weights = method.routing_weights(_Batch(n=3))
    scores = ((image @ images.T) + (text @ texts.T)) / 2
    scores[2] = (text @ texts.T)[2]  # no image: the text term alone
    assert torch.allclose(weights, torch.softmax(scores / 0.1, dim=-1), atol=1e-6)
    method.params.top_routing = "argmax"  # PRISM's port
    hard = method.routing_weights(_Batch(n=3))
    assert torch.equal(hard, torch.nn.functional.one_hot(scores.argmax(-1), 2).float())


def test_hide_routes_on_the_top_decoder_layer_and_fuses_the_lower_ones_in_weight_space():
    from prism.adapters.slot_ops import depth_layers
    from prism.engine.forward_plan import install

    method = make(HiDeLLaVA)
    learn(method, 2)
    hand_made_anchors(method)
    method.prepare_inference(task(1))
    top = depth_layers(method.adapters, -1)
    depth = method.backbone.model.config.text_config.num_hidden_layers - 1
    assert top and all(f"layers.{depth}." in path for path in top)
    weights = torch.tensor([[0.8, 0.2], [0.3, 0.7]])
    batch = _Batch(n=2, model_inputs=lambda: {"attention_mask": torch.ones(2, 5)})
    plan = SimpleNamespace(slot_weights=[SimpleNamespace(weights=weights, layers=method.routed_layers())], sample={},
                           inputs=None)
    install(method, batch, plan, ForwardContext("eval"))
    x = torch.randn(2, 5, method.adapters.layers[top[0]].in_features)
    with torch.no_grad():
        layer = method.adapters.layers[top[0]]
        expected = layer.base_layer(x) + sum(weights[:, t].reshape(2, 1, 1) * layer.slot_delta(f"task{t}", x)
                                             for t in range(2))
        assert torch.allclose(layer(x), expected, atol=1e-5)
        lower = next(p for p in method.adapters.layers if p not in top)
        layer = method.adapters.layers[lower]
        x = torch.randn(2, 5, layer.in_features)
        a = layer.lora_A["task0"].weight + layer.lora_A["task1"].weight
        b = layer.lora_B["task0"].weight + layer.lora_B["task1"].weight
        fused = layer.base_layer(x) + layer.scaling["task0"] * (x @ a.T @ b.T)  # (ΣB)(ΣA) x, cross terms in
        assert torch.allclose(layer(x), fused, atol=1e-5)
        summed = layer.base_layer(x) + layer.slot_delta("task0", x) + layer.slot_delta("task1", x)
        assert not torch.allclose(fused, summed, atol=1e-5)
        method.params.lower_fusion = "sum"
        method.prepare_inference(task(1))
        assert torch.allclose(layer(x), summed, atol=1e-5)


def test_the_oracle_option_puts_every_sample_on_its_true_tasks_slot():
    method = make(DisCo)
    learn(method, 2)
    hand_made_anchors(method)
    method.prepare_inference(task(1))
    plan = method.prepare_forward(_Batch(n=2), ForwardContext("eval", oracle_task=NAMES[0]))
    assert torch.equal(plan.routing, torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    assert plan.routing_slots == tuple(NAMES[:2])


def test_disco_masks_every_layer_with_the_softmax_of_text_prototype_similarity():
    method = make(DisCo)
    learn(method, 2)
    _, texts = hand_made_anchors(method)
    text = torch.nn.functional.normalize(torch.randn(3, texts.shape[1]), dim=-1)
    fake_features(method, torch.zeros(3, method.anchors["image"].dim), torch.zeros(3, dtype=torch.bool), text)
    method.prepare_inference(task(1))
    weights = method.routing_weights(_Batch(n=3))
    assert torch.allclose(weights, torch.softmax((text @ texts.T) / 0.05, dim=-1), atol=1e-5)
    assert method.routed_layers() is None  # every adapted layer
    assert all(layer.active_slots() == ["task0", "task1"] for layer in method.adapters.layers.values())
    method.params.routing_input = "batch_mean"  # the MCITlib release
    mean = torch.nn.functional.normalize(text.mean(0), dim=0)
    shared = torch.softmax((mean @ texts.T) / 0.05, dim=-1)
    assert torch.allclose(method.routing_weights(_Batch(n=3)), shared.expand(3, -1), atol=1e-5)


@pytest.mark.parametrize("cls", [HiDeLLaVA, DisCo])
def test_only_the_current_slot_and_the_projector_receive_gradients(cls, synthetic_data):
    from prism.benchmarks.data import TaskDataset
    from prism.benchmarks.records import load_train_records

    method = make(cls)
    learn(method, 1)
    method.begin_task(task(1))
    model = method.backbone.model
    records = load_train_records(synthetic_data, SPECS[1], max_samples=4)
    dataset = TaskDataset(records, backbone=method.backbone, root=synthetic_data, specs=SPECS[1])
    batch = next(iter(dataset.batches(4, shuffle=False)))
    assert method.prepare_forward(batch, ForwardContext("train")) is None  # training: the current slot alone
    model(**batch.model_inputs()).loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert with_grad <= trainable
    assert any(".lora_B.task1." in n for n in with_grad) and not any(".task0." in n for n in trainable)
    projector = {n for n in trainable if "multi_modal_projector" in n}
    assert projector and projector == set(method.trained_base)
    assert trainable - projector == {n for n in trainable if ".task1." in n}


@pytest.mark.parametrize("cls", [HiDeLLaVA, DisCo])
def test_anchors_survive_a_checkpoint_round_trip_and_are_refused_with_another_tower(cls):
    from prism.errors import CheckpointError

    saved_by = make(cls)
    learn(saved_by, 2)
    hand_made_anchors(saved_by)
    tensors, metadata = saved_by.state_dict(), json.loads(json.dumps(saved_by.state_metadata()))
    loaded = make(cls)
    loaded.load_state(tensors, metadata)
    assert loaded.slot_tasks == {"task0": NAMES[0], "task1": NAMES[1]}
    for kind in ("image", "text"):
        assert torch.equal(loaded.anchors[kind].matrix(), saved_by.anchors[kind].matrix())
    other = json.loads(json.dumps(metadata))
    other["anchors"]["image"]["fingerprint"] = "another-tower"
    with pytest.raises(CheckpointError, match="routing tower"):
        make(cls).load_state(tensors, other)
    other = json.loads(json.dumps(metadata))
    other["anchors"]["text"]["dim"] = 7  # e.g. 1024-d vision states stored where CLIP embeddings belong
    with pytest.raises(CheckpointError):
        make(cls).load_state(tensors, other)


@pytest.mark.parametrize("method_id", ["hide_llava", "disco"])
def test_a_run_routes_every_prediction_with_beam_search(shared_run, method_id):
    from safetensors.torch import load_file

    project, resolved, _ = shared_run("benchmark.tasks='0-1'", "infer.num_beams=2", method=method_id)
    results = resolved.output_dir / "results" / "synthetic" / method_id
    metrics = json.loads((results / "cl_metrics.json").read_text())
    assert set(metrics["routing_accuracy"]) == set(NAMES[:2]) and metrics["routing_row"] == 1
    folder = resolved.output_dir / "predictions" / "synthetic" / method_id
    lines = [json.loads(line) for path in sorted(folder.rglob("*.jsonl")) for line in path.read_text().splitlines()]
    routed = [line["metadata"]["routing"] for line in lines if "question_id" in line]
    assert routed and all(abs(sum(r.values()) - 1) < 1e-4 for r in routed)
    state = load_file(str(resolved.output_dir / "checkpoints" / "synthetic" / method_id / "Task1_llava"
                          / "prism_state.safetensors"))
    for name in NAMES[:2]:  # each task's anchors: a mean over its 48 training records
        assert int(state[f"text_anchor_count.{name}"]) == 48 and int(state[f"image_anchor_count.{name}"]) == 48
    assert any(key.startswith("prism.base.") and "multi_modal_projector" in key for key in state)
