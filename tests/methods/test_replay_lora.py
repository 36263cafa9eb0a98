"""replay_lora: buffer filling, sampling rules, mixing, state round trip, and resume in the engine."""

from __future__ import annotations

import json
import random
from collections import Counter
from types import SimpleNamespace

import pytest

from prism.methods.base import RunInfo, TaskContext
from prism.methods.replay_lora import ReplayLoRA, ReplayLoRAParams, probabilistic_fill, reservoir_sample
from tests.engine.conftest import resolve

NAMES = ["a", "b", "c", "d"]


def make(seed: int = 0, num_tasks: int = 4, **params) -> ReplayLoRA:
    run = RunInfo(num_tasks=num_tasks, task_names=NAMES[:num_tasks], seed=seed)
    return ReplayLoRA(ReplayLoRAParams(**params), run)


def context(index: int, num_tasks: int = 4) -> TaskContext:
    sequence = [SimpleNamespace(name=n) for n in NAMES[:num_tasks]]
    return TaskContext(index=index, spec=sequence[index], sequence=sequence, benchmark="synthetic")


def records_of(name: str, n: int = 40) -> list[dict]:
    return [{"id": f"{name}{i}", "question": f"q{i}", "_task": name} for i in range(n)]


class ServedFit:
    """A FitHandle whose step loop served the training list in a seeded shuffled order."""

    def __init__(self, records: list[dict], seed: int) -> None:
        self.order = list(records)
        random.Random(seed).shuffle(self.order)

    def served_records(self) -> list[dict]:
        return list(self.order)


def learn(method: ReplayLoRA, upto: int, n: int = 40) -> list[list[dict]]:
    """Run the data hooks for tasks 0..upto; returns what each task trained on."""
    trained = []
    for index in range(upto + 1):
        task = context(index, method.run.num_tasks)
        trained.append(method.training_records(task, records_of(NAMES[index], n)))
        method.end_task(task, fit=ServedFit(trained[-1], seed=index))
    return trained


def test_buffer_holds_every_earlier_task_in_even_slots():
    method = make(capacity=30)
    learn(method, 2)
    assert method.slot_size == 10
    assert list(method.buffer) == ["a", "b", "c"]
    assert all(len(v) == 10 for v in method.buffer.values())
    for name, stored in method.buffer.items():
        assert all(r["_task"] == name and r["id"].startswith(name) for r in stored)


def test_last_task_and_single_task_runs_store_nothing():
    method = make(capacity=30)
    learn(method, 3)
    assert "d" not in method.buffer
    single = make(num_tasks=1)
    learn(single, 0)
    assert single.buffer == {} and single.slot_size == 0


def test_reservoir_is_reproducible_and_uniformish():
    first, again, other = make(seed=3, capacity=30), make(seed=3, capacity=30), make(seed=4, capacity=30)
    for m in (first, again, other):
        learn(m, 2)
    assert first.buffer == again.buffer
    assert first.buffer != other.buffer
    counts: Counter = Counter()
    for trial in range(2000):
        counts.update(r["id"] for r in reservoir_sample(records_of("a", 20), 5, random.Random(trial)))
    # each of 20 records is kept with probability 5/20: 500 expected out of 2000
    assert all(400 < counts[f"a{i}"] < 600 for i in range(20))


def test_prism_p07_fills_in_served_order_with_probability_07():
    method = make(capacity=30, sampling="prism_p07")
    trained = learn(method, 2)
    for index, stored in enumerate(method.buffer.values()):
        served = ServedFit(trained[index], seed=index).order
        positions = [served.index(r) for r in stored]
        assert positions == sorted(positions) and len(positions) == 10  # kept as served, not in file order
        assert positions[-1] < 25  # the slot fills early in the served stream
        file_order = [trained[index].index(r) for r in stored]
        assert file_order != sorted(file_order)  # the served order is shuffled, not the file's
    # replayed rows are served too: task c's slot may hold rows of a and b, as PRISM's does
    assert {r["_task"] for r in method.buffer["c"]} > {"c"}
    kept = sum(len(probabilistic_fill(records_of("a", 100), 100, random.Random(s), 0.7)) for s in range(50))
    assert 0.65 < kept / 5000 < 0.75


def test_training_records_concat_and_ratio():
    method = make(capacity=30)
    trained = learn(method, 3)
    last = trained[3]
    assert last[:40] == records_of("d")
    assert last[40:] == method.buffered()
    assert Counter(r["_task"] for r in last[40:]) == {"a": 10, "b": 10, "c": 10}
    assert trained[0] == records_of("a")  # nothing to replay yet

    ratio = make(capacity=30, mix="ratio", replay_ratio=0.2)
    mixed = learn(ratio, 3)[3]
    replayed = mixed[40:]
    assert len(replayed) == 10  # 10 / 50 = 0.2
    assert {r["_task"] for r in replayed} <= {"a", "b", "c"}
    assert all(r in ratio.buffered() for r in replayed)


def test_state_round_trip_restores_identical_buffer():
    method = make(capacity=30, sampling="prism_p07")
    learn(method, 2)
    metadata = json.loads(json.dumps(method.state_metadata()))
    assert metadata["sampling"] == "prism_p07" and metadata["slot_size"] == 10
    restored = make(capacity=30, sampling="prism_p07")
    restored.load_state({}, metadata)
    assert restored.buffer == method.buffer
    assert list(restored.buffer) == list(method.buffer)
    task = context(3)
    assert restored.training_records(task, records_of("d")) == method.training_records(task, records_of("d"))


def test_params_reject_bad_values():
    with pytest.raises(ValueError):
        ReplayLoRAParams(sampling="fifo")
    with pytest.raises(ValueError):
        ReplayLoRAParams(replay_ratio=1.0)


def test_engine_saves_buffer_and_resume_restores_it(project, monkeypatch):
    import prism.engine.loop as loop

    built: list = []
    original = loop.build_method

    def capture(plan):
        method = original(plan)
        built.append(method)
        return method

    monkeypatch.setattr(loop, "build_method", capture)
    sets = ("benchmark.tasks='0-2'", "method.replay_lora.capacity=8", "train.max_steps=2",
            "train.eval_after_each_task=false")
    first = loop.train(resolve(project, *sets, method__id="replay_lora"))
    assert first.trained == ["colour", "shape_mc", "count"]
    ckpt = project / "outputs" / "checkpoints" / "synthetic" / "replay_lora" / "Task2_llava"
    state = json.loads((ckpt / "prism_state.json").read_text())["method_state"]
    assert list(state["buffer"]) == ["colour", "shape_mc"]
    assert all(len(v) == 4 for v in state["buffer"].values())
    assert state["buffer"] == built[0].buffer and state["sampling"] == "reservoir"

    again = loop.train(resolve(project, *sets, method__id="replay_lora"))
    assert again.trained == [] and again.skipped == first.trained
    assert built[1].buffer == state["buffer"]


def test_engine_serves_prism_rows_in_the_order_the_step_loop_trained_on(project, monkeypatch):
    """fit.served_records() is exactly what the step loop fed the model, replayed rows included."""
    from prism.methods.replay_lora import ReplayLoRA

    seen: list[dict] = []
    checks: list[tuple[list, list, list]] = []
    original_end = ReplayLoRA.end_task

    def spy_forward(self, batch, *, training):
        if training:
            seen.extend(batch.records)

    def spy_end(self, task, fit):
        served = fit.served_records()
        checks.append((list(seen), served, []))
        original_end(self, task, fit)
        checks[-1][2].extend(self.buffer.get(task.name, []))
        seen.clear()

    monkeypatch.setattr(ReplayLoRA, "before_forward", spy_forward)
    monkeypatch.setattr(ReplayLoRA, "end_task", spy_end)
    sets = ("benchmark.tasks='0-1'", "method.replay_lora.capacity=6", "method.replay_lora.sampling='prism_p07'",
            "train.max_steps=3", "train.global_batch_size=4", "train.micro_batch_size=2",
            "train.eval_after_each_task=false")
    from prism.engine.loop import train

    train(resolve(project, *sets, method__id="replay_lora"))
    (fed0, served0, stored0), (fed1, served1, _) = checks
    assert len(fed0) == 12 and [r["id"] for r in served0] == [r["id"] for r in fed0]
    assert [r["id"] for r in served1] == [r["id"] for r in fed1]
    positions = [[r["id"] for r in served0].index(r["id"]) for r in stored0]
    assert len(stored0) == 6 and positions == sorted(positions)  # task 0's slot, filled as served
