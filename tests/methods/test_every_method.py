"""Every registered method trains on the embedded default, and its checkpoints reload to the
same predictions (in a fresh model, adapters swapped in by `prism infer`'s code path)."""

from __future__ import annotations

import json
import shutil

import pytest

from prism.engine.infer import infer
from prism.plugins import PluginManager
from tests.conftest import copy_project
from tests.engine.conftest import resolve

METHODS = PluginManager(autoload=False).registry("method").ids()


def _predictions(folder):
    return {p.name: [json.loads(line)["text"] for line in p.read_text().splitlines()]
            for p in sorted(folder.rglob("*.jsonl"))}


@pytest.mark.parametrize("method", METHODS)
def test_checkpoints_reload_to_the_same_predictions(shared_run, method, tmp_path):
    project, _, _ = shared_run("benchmark.tasks='0-1'", method=method)
    copy = copy_project(project, tmp_path)
    resolved = resolve(copy, "benchmark.tasks='0-1'", method__id=method)
    predictions_dir = resolved.output_dir / "predictions"
    before = _predictions(predictions_dir)
    assert before, "no predictions written"
    shutil.rmtree(predictions_dir)
    infer(resolved)
    assert _predictions(predictions_dir) == before
