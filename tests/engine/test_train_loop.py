"""The task loop: layout, checkpoint contents, predictions, matrix, skip/restart on rerun."""

from __future__ import annotations

import json

import pytest

from prism.engine.loop import train
from prism.errors import UsageError

from .conftest import resolve


def test_two_tasks_write_the_prism_layout(project):
    resolved = resolve(project, "benchmark.tasks='0-1'")
    outcome = train(resolved)
    out = project / "outputs"
    for k, seen in ((0, ["colour"]), (1, ["colour", "shape_mc"])):
        ckpt = out / "checkpoints" / "synthetic" / "ft_lora" / f"Task{k}_llava"
        names = {p.name for p in ckpt.iterdir()}
        assert {"adapter_model.safetensors", "adapter_config.json", "prism_state.json", "manifest.json"} <= names
        state = json.loads((ckpt / "prism_state.json").read_text())
        assert state["tasks_seen"] == seen
        assert state["prism_version"] and state["config_hash"]
        preds = out / "predictions" / "synthetic" / "ft_lora" / f"Task{k}_llava"
        assert sorted(p.stem for p in preds.glob("*.jsonl")) == sorted(seen)
        lines = (preds / "colour.jsonl").read_text().splitlines()
        assert len(lines) == 6
        assert set(json.loads(lines[0])) >= {"question_id", "prompt", "text", "answer", "model_id", "metadata"}
    matrix = outcome.matrix.to_list()
    assert matrix[0][0] is not None and matrix[1][0] is not None and matrix[1][1] is not None
    results = out / "results" / "synthetic" / "ft_lora"
    assert (results / "accuracy_matrix.json").is_file()
    summary = json.loads((results / "cl_metrics.json").read_text())
    assert {"last", "mft", "maa", "bwt"} <= set(summary)
    assert (results / "config.resolved.toml").is_file()


def test_rerun_skips_finished_tasks_and_restart_retrains(project):
    resolved = resolve(project, "benchmark.tasks='0-1'")
    first = train(resolved)
    assert first.trained == ["colour", "shape_mc"]
    again = train(resolved)
    assert again.trained == [] and again.skipped == ["colour", "shape_mc"]
    assert again.matrix.to_list() == first.matrix.to_list()
    extended = train(resolve(project, "benchmark.tasks='0-2'"))
    assert extended.skipped == ["colour", "shape_mc"] and extended.trained == ["count"]
    restarted = train(resolved, restart=True)
    assert restarted.trained == ["colour", "shape_mc"]


def test_changed_config_refuses_to_mix_checkpoints(project):
    train(resolve(project, "benchmark.tasks='0'"))
    with pytest.raises(UsageError, match="different configuration"):
        train(resolve(project, "benchmark.tasks='0'", "train.lr=1e-4"))


def test_zeroshot_trains_nothing(project):
    resolved = resolve(project, "benchmark.tasks='0-1'", method__id="zeroshot")
    outcome = train(resolved)
    ckpt = project / "outputs" / "checkpoints" / "synthetic" / "zeroshot" / "Task1_llava"
    assert not (ckpt / "adapter_model.safetensors").exists()
    row0, row1 = outcome.matrix.to_list()
    assert row0[0] == row1[0]  # the model never changed
