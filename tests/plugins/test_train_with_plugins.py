"""The acceptance run: the pip-installed lwf plugin trains on the embedded default through `prism train`."""

from __future__ import annotations

import json

from .conftest import QUICK_TRAIN, TRAIN_ENV, prism


def test_lwf_trains_saves_its_teacher_and_resumes(plugin_site, default_project):
    def train(tasks: str):
        result = prism(plugin_site, "train", "--tasks", tasks, "--method", "lwf", *QUICK_TRAIN, "--json",
                       cwd=default_project, **TRAIN_ENV)
        assert result.returncode == 0, result.stderr[-3000:]
        return json.loads(result.stdout)

    first = train("0-1")
    assert first["tasks"] == ["colour", "shape_mc"] and len(first["matrix"]) == 2
    ckpt = default_project / "outputs" / "checkpoints" / "synthetic" / "lwf" / "Task1_llava"
    state = json.loads((ckpt / "prism_state.json").read_text())
    assert state["method"] == "lwf" and state["method_state"] == {"teacher_task": "shape_mc"}
    assert state["has_state_tensors"] and state["adapters"]["layout"] == "peft"  # the student is stock peft
    # a longer sequence skips the finished tasks and trains the next with the restored teacher
    assert train("0-2")["tasks"] == ["colour", "shape_mc", "count"]
