"""The feature cache in a run: row 1 re-evaluates task 0's images from the cache; answers unchanged; run.json counts."""

from __future__ import annotations

import json

from prism.engine.run_record import read_run_record
from tests.conftest import copy_project
from tests.engine.conftest import resolve


def _predictions(layout, index):
    return {p.name: [json.loads(line)["text"] for line in p.read_text().splitlines()]
            for p in sorted(layout.predictions(index).glob("*.jsonl"))}


def test_second_evaluation_is_served_from_the_cache_with_identical_answers(shared_run, tmp_path):
    from prism.engine.infer import infer

    project, _, outcome = shared_run("benchmark.tasks='0-1'")
    stats = read_run_record(outcome.layout.results_dir)["feature_cache"]
    # 6 test images per task: row 0 encodes task 0, row 1 serves task 0 and encodes task 1
    assert stats["mode"] == "memory"
    assert stats["images_encoded"] == 12 and stats["images_served"] == 6
    # prism infer from the checkpoints without the cache gives the same answers as the cached run
    cached = {i: _predictions(outcome.layout, i) for i in (0, 1)}
    assert all(cached.values())
    project = copy_project(project, tmp_path)
    resolved = resolve(project, "benchmark.tasks='0-1'", "infer.feature_cache='off'")
    from prism.engine.session import plan_run

    for i in (0, 1):
        for p in plan_run(resolved).layout.predictions(i).glob("*.jsonl"):
            p.unlink()
    layout, _, _ = infer(resolved)
    assert {i: _predictions(layout, i) for i in (0, 1)} == cached
    assert read_run_record(layout.results_dir)["feature_cache"] == {"mode": "off"}


def test_disk_cache_serves_a_later_prism_infer(shared_run, tmp_path):
    from prism.engine.infer import infer
    from prism.engine.session import plan_run

    project, _, outcome = shared_run("benchmark.tasks='0-1'")
    cached = {i: _predictions(outcome.layout, i) for i in (0, 1)}
    project = copy_project(project, tmp_path)
    resolved = resolve(project, "benchmark.tasks='0-1'", "infer.feature_cache='disk'")
    layout = plan_run(resolved).layout
    counts = []
    for _ in range(2):  # two separate `prism infer` runs, predictions removed in between
        for i in (0, 1):
            for p in layout.predictions(i).glob("*.jsonl"):
                p.unlink()
        infer(resolved)
        stats = read_run_record(layout.results_dir)["feature_cache"]
        counts.append((stats["images_encoded"], stats["images_served"]))
        assert {i: _predictions(layout, i) for i in (0, 1)} == cached
    assert counts == [(12, 6), (0, 18)]
    assert len(list((layout.output_dir / "cache" / "vision_features").rglob("*.safetensors"))) == 12
