"""train / infer / eval / ckpt through the real `prism` process: exit codes, JSON on stdout."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.engine.conftest import QUICK

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def project(tmp_path, synthetic_data):
    shutil.copy(REPO / "prism.toml", tmp_path / "prism.toml")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "synthetic").symlink_to(synthetic_data, target_is_directory=True)
    return tmp_path


def _sets() -> list[str]:
    args = []
    for item in QUICK:
        args += ["--set", item]
    return args


def test_train_infer_eval_ckpt(project):
    result = run_cli(["train", "--tasks", "0-1", *_sets(), "--json"], cwd=project)
    assert result.code == 0, str(result)
    data = json.loads(result.stdout)
    assert data["tasks"] == ["colour", "shape_mc"] and len(data["matrix"]) == 2
    assert "after task" in result.stderr  # the human table goes to stderr

    listed = run_cli(["ckpt", "list", "--json"], cwd=project)
    assert listed.code == 0, str(listed)
    assert [c["name"] for c in json.loads(listed.stdout)] == ["Task0_llava", "Task1_llava"]

    inspected = run_cli(["ckpt", "inspect", "Task1_llava", "--json"], cwd=project)
    assert inspected.code == 0, str(inspected)
    report = json.loads(inspected.stdout)
    assert report["verified"] and report["state"]["tasks_seen"] == ["colour", "shape_mc"]
    assert report["adapter_config"]["peft_type"] == "LORA"

    missing = run_cli(["ckpt", "inspect", "Task7_llava"], cwd=project)
    assert missing.code == 1 and "Traceback" not in missing.stderr

    inferred = run_cli(["infer", "--tasks", "0-1", *_sets(), "--json"], cwd=project)
    assert inferred.code == 0, str(inferred)
    assert json.loads(inferred.stdout)["matrix"] == data["matrix"]
    # the predictions were there already: nothing to encode, and the counters say so
    assert json.loads(inferred.stdout)["feature_cache"] == {
        "mode": "memory", "images_encoded": 0, "images_served": 0, "disk_entries_rejected": 0,
        "memory_entries": 0, "memory_bytes": 0}

    evaluated = run_cli(["eval", "--tasks", "0-1", *_sets(), "--json"], cwd=project)
    assert evaluated.code == 0, str(evaluated)
    out = json.loads(evaluated.stdout)
    assert out["matrix"] == data["matrix"]
    for path in out["artifacts"].values():
        assert Path(path).is_file()

    pred = project / "outputs/predictions/synthetic/ft_lora/Task0_llava/colour.jsonl"
    scored = run_cli(["eval", "score", str(pred), "--metric", "exact_match", "--json"], cwd=project)
    assert scored.code == 0, str(scored)
    assert json.loads(scored.stdout)["score"] == data["matrix"][0][0]


def test_bad_value_exits_2_and_writes_nothing(project):
    result = run_cli(["train", "--set", "train.lr=abc"], cwd=project)
    assert result.code == 2, result
    assert "train" in result.stderr and "lr" in result.stderr and "Traceback" not in result.stderr
    assert not (project / "outputs").exists()


def test_unknown_key_in_file_exits_2(project):
    toml = project / "prism.toml"
    toml.write_text(toml.read_text().replace("[train]\n", "[train]\nlearning_rate = 1e-3\n", 1))
    result = run_cli(["train"], cwd=project)
    assert result.code == 2, result
    assert "learning_rate" in result.stderr and "prism.toml:" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (project / "outputs").exists()


def test_broken_local_plugin_does_not_break_methods_list(project):
    (project / "plugins").mkdir()
    (project / "plugins" / "broken.py").write_text("raise ImportError('this plugin is broken')\n")
    listed = run_cli(["methods", "list", "--json"], cwd=project)
    assert listed.code == 0, str(listed)
    assert "ft_lora" in {m["id"] for m in json.loads(listed.stdout)}
    plugins = run_cli(["plugins", "--json"], cwd=project)
    broken = [p for p in json.loads(plugins.stdout) if p["name"] == "local:broken"]
    assert broken and "this plugin is broken" in broken[0]["errors"][0]


def test_methods_show(project):
    shown = run_cli(["methods", "show", "ft_lora", "--json"], cwd=project)
    assert shown.code == 0, str(shown)
    params = {p["name"]: p for p in json.loads(shown.stdout)["params"]}
    assert {"r", "alpha", "dropout", "target_modules"} <= set(params)
    unknown = run_cli(["methods", "show", "ft_lroa"], cwd=project)
    assert unknown.code == 2 and "did you mean 'ft_lora'" in unknown.stderr
