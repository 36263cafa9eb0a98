"""LwF's mechanism on prism's tiny LLaVA (random weights, built in memory in about a second).

What must hold: no distillation before a teacher exists; zero distillation while the student
equals the teacher; a positive term once the student drifts; its gradient moves the student's
outputs back toward the teacher's; the teacher is frozen and survives a save/load of the state.
"""

from __future__ import annotations

import copy
import random
from types import SimpleNamespace

import pytest
import torch

from prism.backbones import tiny
from prism.methods.base import RunInfo, TaskContext
from prism_lwf.method import STUDENT, TEACHER, LwF, LwFParams, distillation_loss


@pytest.fixture(scope="module")
def parts():
    """One random tiny LLaVA for the module; each method attaches to its own copy."""
    return tiny.build_untrained(seed=0)


@pytest.fixture(scope="module")
def batch(parts):
    return tiny.base_batch(random.Random(0), tiny.loaded(*parts), 4, tiny.copy_words())


@pytest.fixture
def make(parts):
    def build(**params) -> LwF:
        model, tokenizer, processor = parts
        backbone = tiny.loaded(copy.deepcopy(model), tokenizer, processor)
        method = LwF(LwFParams(r=4, alpha=8, dropout=0.0, **params),
                     RunInfo(num_tasks=2, task_names=["a", "b"], seed=0))
        method.attach(backbone)
        return method

    return build


def _task(index: int) -> TaskContext:
    spec = SimpleNamespace(name="ab"[index])
    return TaskContext(index=index, spec=spec, sequence=[SimpleNamespace(name="a"), SimpleNamespace(name="b")],
                       benchmark="test")


def _forward(method: LwF, batch):
    return method.backbone.model(**batch.model_inputs())


def _drift(method: LwF, scale: float = 0.5) -> None:
    """Move the student away from the teacher (B starts at zero, so give it values)."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in method.adapters.named_parameters([STUDENT]).items():
            if ".lora_B." in name:
                param.add_(scale * torch.randn(param.shape, generator=generator))


def test_distillation_loss_is_a_masked_tempered_kl():
    logits = torch.randn(2, 5, 7)
    labels = torch.full((2, 5), -100)
    assert distillation_loss(logits, logits + 1.0, labels, 2.0).item() == 0.0  # no supervised token
    labels[0, 3] = 1
    labels[1, 4] = 2
    assert distillation_loss(logits, logits, labels, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    teacher = torch.randn(2, 5, 7)
    t, s = (teacher[[0, 1], [2, 3]] / 3.0).softmax(-1), (logits[[0, 1], [2, 3]] / 3.0).softmax(-1)
    expected = (t * (t.log() - s.log())).sum(-1).mean()  # Li & Hoiem: no T² factor
    assert distillation_loss(logits, teacher, labels, 3.0).item() == pytest.approx(expected.item(), rel=1e-5)
    hinton = distillation_loss(logits, teacher, labels, 3.0, t_squared=True).item()
    assert hinton == pytest.approx(9.0 * expected.item(), rel=1e-5)


def test_t_squared_is_an_explicit_option_off_by_default():
    assert LwFParams().t_squared is False
    assert LwFParams(t_squared=True).t_squared is True


def test_no_distillation_on_the_first_task(make, batch):
    method = make()
    method.begin_task(_task(0))
    outputs = _forward(method, batch)
    assert not method.has_teacher
    assert method.loss(_task(0), batch, outputs) is outputs.loss


def test_term_is_zero_at_the_snapshot_and_positive_after_drift(make, batch):
    method = make()
    _drift(method)  # as if task 0 had been learned
    method.end_task(_task(0), fit=None)
    method.begin_task(_task(1))
    outputs = _forward(method, batch)
    at_snapshot = method.loss(_task(1), batch, outputs) - outputs.loss
    assert at_snapshot.item() == pytest.approx(0.0, abs=1e-5)
    _drift(method)
    outputs = _forward(method, batch)
    drifted = method.loss(_task(1), batch, outputs) - outputs.loss
    assert drifted.item() > 1e-3


def test_gradient_pulls_the_student_toward_the_teacher(make, batch):
    method = make(lambda_distill=1.0)
    method.end_task(_task(0), fit=None)
    _drift(method)
    method.begin_task(_task(1))
    teacher = method.teacher_logits(batch)
    params = method.trainable_parameters()
    assert params and all(".lwf_teacher." not in n for n, p in method.backbone.model.named_parameters()
                          if p.requires_grad)

    def gap() -> float:
        with torch.no_grad():
            return float(distillation_loss(_forward(method, batch).logits, teacher, batch.labels, 2.0))

    before = gap()
    optimizer = torch.optim.SGD(params, lr=0.5)
    for _ in range(3):
        outputs = _forward(method, batch)
        term = method.loss(_task(1), batch, outputs) - outputs.loss  # the distillation term alone
        optimizer.zero_grad()
        term.backward()
        optimizer.step()
    assert gap() < 0.8 * before
    assert torch.equal(method.teacher_logits(batch), teacher)  # the teacher never moved


def test_teacher_survives_state_round_trip(make, batch):
    method = make()
    _drift(method)
    method.end_task(_task(0), fit=None)
    tensors, meta = method.state_dict(), method.state_metadata()
    assert tensors and meta == {"teacher_task": "a"}
    assert method.adapter_slots_for_checkpoint() == [STUDENT]

    resumed = make()
    resumed.load_state(tensors, meta)
    assert resumed.has_teacher and resumed.teacher_task == "a"
    assert torch.allclose(resumed.teacher_logits(batch), method.teacher_logits(batch), atol=1e-6)
    assert resumed.adapters.layers  # student still active alone for inference
    resumed.prepare_inference(_task(0))
    assert all(layer.active_slots() == [STUDENT] for layer in resumed.adapters.layers.values())
    assert TEACHER in resumed.adapters.slots


def test_export_merges_the_student_alone(make, batch):
    """`prism ckpt export` merges inference_mix(): the student, never the teacher slot."""
    from prism.adapters.merge import merge_into_base

    method = make()
    _drift(method)
    method.end_task(_task(0), fit=None)
    method.begin_task(_task(1))
    _drift(method)  # the student now differs from the teacher
    method.prepare_inference(_task(1))
    method.backbone.model.eval()
    with torch.no_grad():
        answered = _forward(method, batch).logits
    assert method.inference_mix() == {STUDENT: 1.0}
    merge_into_base(method.adapters, method.inference_mix())
    with torch.no_grad():
        merged = _forward(method, batch).logits
    torch.testing.assert_close(merged, answered, atol=1e-4, rtol=1e-5)
