"""Cost accounting: run.json ``costs`` per task (train and eval), totals, and resumes."""

from __future__ import annotations

import shutil

import pytest

from prism.engine.costs import count_generated, totals_of
from prism.engine.loop import train
from prism.engine.run_record import read_run_record

from .conftest import resolve


def test_two_tasks_record_their_costs_and_a_rerun_keeps_them(project):
    resolved = resolve(project, "benchmark.tasks='0-1'", "train.max_steps=2", "train.global_batch_size=4")
    outcome = train(resolved)
    results = outcome.layout.results_dir
    costs = read_run_record(results)["costs"]
    names = outcome.trained
    assert list(costs["tasks"]) == names
    assert len(names) == 2 and costs["devices"] == 1 and costs["device_type"] == "cpu"
    assert "gpu_hours" not in costs and costs["device_hours"] > 0
    for position, name in enumerate(names):
        task = costs["tasks"][name]
        assert task["train"]["steps"] == 2
        assert task["train"]["samples"] == 2 * 4  # steps x global batch
        assert task["train"]["seconds"] > 0 and task["train"]["samples_per_s"] > 0
        # every sample has at least one non-padding token, and fewer than the model's context
        assert 8 <= task["train"]["tokens"] <= 8 * 4096 and task["train"]["tokens_per_s"] > 0
        assert task["eval"]["seconds"] > 0
        assert task["eval"]["generations"] == 6 * (position + 1)  # max_test_samples x tasks seen
        assert task["peak_memory_bytes"] > 0
    totals = costs["totals"]
    assert totals["train_samples"] == sum(t["train"]["samples"] for t in costs["tasks"].values())
    assert totals["train_tokens"] == sum(t["train"]["tokens"] for t in costs["tasks"].values())
    assert totals["eval_seconds"] == pytest.approx(sum(t["eval"]["seconds"] for t in costs["tasks"].values()),
                                                   abs=1e-2)
    assert totals["device_hours"] == pytest.approx(totals["seconds"] / 3600, rel=1e-3)

    # a rerun skips both tasks: the record is rewritten, the costs of the skipped tasks stay
    again = train(resolved)
    assert again.skipped == names
    assert read_run_record(results)["costs"]["tasks"] == costs["tasks"]
    # the last task's checkpoint lost: the rerun retrains it and keeps the first task's costs
    shutil.rmtree(outcome.layout.checkpoint(1))
    partial = train(resolved)
    assert partial.skipped == names[:1] and partial.trained == names[1:]
    kept = read_run_record(results)["costs"]["tasks"]
    assert kept[names[0]] == costs["tasks"][names[0]] and kept[names[1]] != costs["tasks"][names[1]]
    assert kept[names[1]]["train"]["steps"] == 2 and kept[names[1]]["eval"]["generations"] == 12
    # --restart retrains everything: the old costs go, new ones come
    train(resolved, restart=True)
    fresh = read_run_record(results)["costs"]["tasks"]
    assert set(fresh) == set(names) and fresh != costs["tasks"]


def test_totals_sum_the_tasks_and_count_device_hours():
    tasks = {"a": {"train": {"seconds": 1800, "samples": 10, "tokens": 100, "steps": 2},
                   "eval": {"seconds": 1800, "generations": 4, "generated_tokens": 8}, "peak_memory_bytes": 5},
             "b": {"train": {"seconds": 3600, "samples": 30, "tokens": 300, "steps": 3}, "peak_memory_bytes": 9}}
    totals = totals_of(tasks, devices=4)
    assert totals["train_samples"] == 40 and totals["train_tokens"] == 400 and totals["train_steps"] == 5
    assert totals["seconds"] == 7200 and totals["device_hours"] == 8.0
    assert totals["train_samples_per_s"] == pytest.approx(40 / 5400, abs=1e-3)
    assert totals["peak_memory_bytes"] == 9 and totals["generations"] == 4


def test_generated_tokens_are_counted_from_the_prediction_texts(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"text": "a b c"}\n{"text": ""}\n\n{"text": "d"}\n', encoding="utf-8")

    def tokenizer(text, add_special_tokens):
        return {"input_ids": text.split()}

    assert count_generated([path, tmp_path / "missing.jsonl"], tokenizer) == (3, 4)
