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


def learn(method: ReplayLoRA, upto: int, n: int = 40) -> list[list[dict]]:
    """Run the data hooks for tasks 0..upto; returns what each task trained on."""
    trained = []
    for index in range(upto + 1):
        task = context(index, method.run.num_tasks)
        trained.append(method.training_records(task, records_of(NAMES[index], n)))
        method.end_task(task, fit=None)
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


def test_prism_p07_fills_in_data_order_with_probability_07():
    method = make(capacity=30, sampling="prism_p07")
    learn(method, 2)
    for name, stored in method.buffer.items():
        ids = [int(r["id"][1:]) for r in stored]
        assert ids == sorted(ids) and len(ids) == 10
        assert ids[-1] < 25  # slot filled early in the data, not spread over it
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
