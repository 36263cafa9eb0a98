"""Contract v2's forward plan: per-sample routing through beam search, inputs overrides, routing records."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from prism.engine.forward_plan import insert_prefix, plan_forward, repeat_for_beams
from prism.methods.base import Method, RunInfo
from prism.methods.forward import ForwardContext, ForwardPlan, SlotWeights


def test_beams_repeat_each_sample_in_place_like_generate():
    rows = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert repeat_for_beams(rows, 3).tolist() == [[1, 0]] * 3 + [[0, 1]] * 3
    assert repeat_for_beams(rows, 1) is rows


def test_context_and_plan_check_what_they_are_given():
    with pytest.raises(ValueError, match="phase"):
        ForwardContext("predict")
    with pytest.raises(ValueError, match="num_beams"):
        ForwardContext("eval", num_beams=0)
    with pytest.raises(ValueError, match="routing_slots"):
        ForwardPlan(routing=torch.ones(2, 3), routing_slots=("a", "b"))
    plan = ForwardPlan(routing=torch.tensor([[0.25, 0.75]]), routing_slots=("colour", "count"))
    assert plan.routing_rows() == [{"colour": 0.25, "count": 0.75}]
    assert plan.sample_details(1) is None
    assert ForwardPlan(describe_samples=lambda: [{"experts": [1]}]).sample_details(1) == [{"experts": [1]}]
    with pytest.raises(ValueError, match="2 samples"):
        ForwardPlan(describe_samples=lambda: [{"experts": [1]}]).sample_details(2)
    with pytest.raises(ValueError, match="routing"):  # the engine's own metadata stays the engine's
        ForwardPlan(describe_samples=lambda: [{"routing": {}}]).sample_details(1)


def test_v1_methods_keep_their_before_forward():
    calls = []
    legacy = SimpleNamespace(before_forward=lambda batch, training: calls.append(training))
    for phase in ("train", "end_task", "eval"):
        assert plan_forward(legacy, object(), ForwardContext(phase)) is None
    assert calls == [True, True, False]

    class V1(Method):
        id = "v1"

        def before_forward(self, batch, *, training):
            calls.append(("method", training))

    assert plan_forward(V1(None, RunInfo(1, ["a"])), object(), ForwardContext("eval", 2)) is None
    assert calls[-1] == ("method", False)


def test_prefix_goes_after_bos_under_left_and_right_padding():
    embeds = torch.arange(2 * 4, dtype=torch.float32).reshape(2, 4, 1)
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 0]])  # row 0 left-padded, row 1 right-padded
    labels = torch.tensor([[-100, -100, 5, 6], [-100, 7, 8, -100]])
    prefix = torch.full((2, 1), -1.0)
    out, out_mask, out_labels = insert_prefix(embeds, mask, prefix, labels=labels)
    assert out[..., 0].tolist() == [[0, 1, -1, -1, 2, 3], [4, -1, -1, 5, 6, 7]]
    assert out_mask.tolist() == [[0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0]]
    assert out_labels.tolist() == [[-100, -100, -100, -100, 5, 6], [-100, -100, -100, 7, 8, -100]]


class _TwoSlots(Method):
    """Routes each sample to one of two slots by the parity of its question id (a hand-made router)."""

    id = "two_slots"

    def attach(self, backbone):
        from prism.adapters.inject import inject_adapters

        super().attach(backbone)
        self.adapters = inject_adapters(backbone.model, backbone.target_regex("attn_and_ffn"))
        generator = torch.Generator().manual_seed(0)
        for slot in ("even", "odd"):
            self.adapters.add_slot(slot, r=4, alpha=8.0, generator=generator)
            for layer in self.adapters.layers.values():  # a visible update: B is zero at creation
                torch.nn.init.normal_(layer.lora_B[slot].weight, std=2.0, generator=generator)
        self.adapters.activate(["even", "odd"])
        self.swap = False

    def prepare_forward(self, batch, context):
        odd = torch.tensor([int(str(r["question_id"])[-1]) % 2 for r in batch.records])
        odd = 1 - odd if self.swap else odd
        weights = torch.stack([1.0 - odd, odd.float()], dim=1)
        return ForwardPlan(slot_weights=[SlotWeights(weights)], routing=weights, routing_slots=("even", "odd"))


def test_beam_search_routes_every_sample_to_its_own_slot(synthetic_data, tmp_path):
    from prism.backbones.llava import LlavaBackbone
    from prism.benchmarks.data import load_test_records
    from prism.benchmarks.synthetic import TASKS
    from prism.inference.generate import predict_task

    backbone = LlavaBackbone().load(SimpleNamespace(model="builtin:tiny-llava", attn="auto"))
    method = _TwoSlots(None, RunInfo(1, ["colour"]))
    method.attach(backbone)
    spec = TASKS[0].spec
    records = load_test_records(synthetic_data, spec, max_samples=4)

    def run(name, batch_size, beams=2):
        return predict_task(backbone=backbone, method=method, spec=spec, root=synthetic_data, records=records,
                            out_path=tmp_path / f"{name}.jsonl", model_id="m", batch_size=batch_size,
                            max_new_tokens=4, num_beams=beams)

    together = run("together", 4)
    alone = run("alone", 1)
    assert [p["text"] for p in together] == [p["text"] for p in alone]
    method.swap = True
    swapped = run("swapped", 4)
    assert [p["text"] for p in swapped] != [p["text"] for p in together]  # the slots matter
    written = [json.loads(line) for line in (tmp_path / "together.jsonl").read_text().splitlines()]
    routes = {str(p["question_id"]): p["metadata"]["routing"] for p in written if "question_id" in p}
    for qid, route in routes.items():
        own = "odd" if int(qid[-1]) % 2 else "even"
        assert route[own] == 1.0 and sum(route.values()) == 1.0


class _SeeingRouter(torch.nn.Module):
    """A per-sample router that pools the prompt once (mask-aware) and reuses it while decoding."""

    takes_context = True

    def __init__(self, seen):
        super().__init__()
        self.seen = seen

    def forward(self, x, context):
        from prism.adapters.router_context import masked_mean

        if context.prefill:
            context.cache["pooled"] = masked_mean(x, context.attention_mask)
        self.seen.append((context.prefill, x.shape[:2], tuple(context.attention_mask.shape),
                          context.sample["task"].tolist()))
        pooled = context.cache["pooled"]
        return torch.nn.functional.one_hot(context.sample["task"], 2).to(pooled.dtype) + 0 * pooled[:, :2]


def test_routers_see_the_mask_the_samples_and_prefill_or_decode(synthetic_data, tmp_path):
    from prism.backbones.llava import LlavaBackbone
    from prism.benchmarks.data import load_test_records
    from prism.benchmarks.synthetic import TASKS
    from prism.inference.generate import predict_task

    backbone = LlavaBackbone().load(SimpleNamespace(model="builtin:tiny-llava", attn="auto"))
    method = _TwoSlots(None, RunInfo(1, ["colour"]))
    method.attach(backbone)
    seen: list = []
    last = list(method.adapters.layers)[-1]
    method.adapters.set_router(lambda layer: _SeeingRouter(seen), layers=[last])
    method.prepare_forward = lambda batch, context: ForwardPlan(sample={"task": torch.tensor([0, 1])})
    spec = TASKS[0].spec
    records = load_test_records(synthetic_data, spec, max_samples=2)
    predict_task(backbone=backbone, method=method, spec=spec, root=synthetic_data, records=records,
                 out_path=tmp_path / "p.jsonl", model_id="m", batch_size=2, max_new_tokens=3, num_beams=2)
    prefill, *decode = seen
    assert prefill[0] is True and prefill[1][0] == 4 and prefill[1][1] > 1  # 2 samples x 2 beams, whole prompt
    assert prefill[2] == (4, prefill[1][1]) and prefill[3] == [0, 0, 1, 1]
    assert decode and all(not p and shape[1] == 1 for p, shape, _, _ in decode)
    assert [mask[1] for _, _, mask, _ in decode] == [prefill[1][1] + k for k in range(1, len(decode) + 1)]


def test_the_task_reaches_a_method_at_evaluation_only_as_an_explicit_oracle(synthetic_data, tmp_path):
    from prism.backbones.llava import LlavaBackbone
    from prism.benchmarks.data import load_test_records
    from prism.benchmarks.synthetic import TASKS
    from prism.evaluation.matrix import AccuracyMatrix
    from prism.evaluation.report import render_report
    from prism.inference.generate import predict_task

    backbone = LlavaBackbone().load(SimpleNamespace(model="builtin:tiny-llava", attn="auto"))
    told: list = []
    method = SimpleNamespace(prepare_forward=lambda batch, context: told.append(context.oracle_task))
    spec = TASKS[2].spec
    records = load_test_records(synthetic_data, spec, max_samples=2)
    for oracle in (False, True):
        predict_task(backbone=backbone, method=method, spec=spec, root=synthetic_data, records=records,
                     out_path=tmp_path / f"{oracle}.jsonl", model_id="m", batch_size=2, max_new_tokens=2,
                     task_oracle=oracle)
    assert told == [None, "count"]
    matrix = AccuracyMatrix.from_cells(["count"], {(0, 0): 50.0})
    assert "Task oracle" in render_report(matrix, summary={**matrix.summary(), "task_oracle": True})
    assert "Task oracle" not in render_report(matrix, summary=matrix.summary())
