"""joint sees every task's data in one training step and fills only the final row."""

from __future__ import annotations

from prism.engine.loop import train
from tests.engine.conftest import resolve


def test_joint_trains_once_on_every_task(project, monkeypatch):
    from prism.methods.joint import Joint

    seen: list[set[str]] = []
    original = Joint.training_records

    def spy(self, task, records):
        seen.append({r["_task"] for r in records})
        return original(self, task, records)

    monkeypatch.setattr(Joint, "training_records", spy)
    resolved = resolve(project, "benchmark.tasks='0-2'", method__id="joint")
    outcome = train(resolved)
    assert seen == [{"colour", "shape_mc", "count"}]  # one training step, all tasks' data
    matrix = outcome.matrix.to_list()
    assert matrix[0][0] is None and matrix[1][0] is None
    assert all(v is not None for v in matrix[2])
    assert outcome.summary["last"] == sum(matrix[2]) / 3
    assert outcome.summary["bwt"] is None and "joint" in outcome.summary["note"]
    import json

    log = [json.loads(line) for line in (outcome.layout.results_dir / "metrics.jsonl").read_text().splitlines()]
    assert log[-1]["steps"] == 3 * 6  # the whole sequence's budget: 3 tasks x max_steps 6
    ckpts = sorted(p.name for p in outcome.layout.checkpoints_dir.iterdir())
    assert ckpts == ["Task2_llava"]
    again = train(resolved)
    assert again.trained == [] and again.skipped == ["colour", "shape_mc", "count"]
