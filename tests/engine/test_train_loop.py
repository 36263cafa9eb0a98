"""The task loop: layout, checkpoint contents, predictions, matrix, skip/restart on rerun."""

from __future__ import annotations

import json

import pytest

from prism.engine.loop import train
from prism.errors import ConfigError, UsageError

from .conftest import QUICK, resolve


def test_two_tasks_write_the_prism_layout(shared_run):
    project, _, outcome = shared_run("benchmark.tasks='0-1'")
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


# -- a run that cannot start leaves its outputs as they were (--restart included) ----------------
def _files(folder):
    """Every file under ``folder`` with its bytes (new, changed and removed files all show)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, synthetic_data):
    """A trained one-task tiny run, plus the outputs of a ucit run (made by hand: no ucit data here)."""
    from .conftest import new_project

    project = new_project(tmp_path_factory.mktemp("trained-run"), synthetic_data)
    train(resolve(project, "benchmark.tasks='0'"))
    out = project / "outputs"
    for folder, name, text in (("checkpoints", "Task0_llava/manifest.json", "{}"),
                               ("predictions", "Task0_llava/ImageNet-R.jsonl", '{"question_id": 0}\n'),
                               ("results", "accuracy_matrix.json", '{"tasks": ["ImageNet-R"]}')):
        path = out / folder / "ucit" / "ft_lora" / name
        path.parent.mkdir(parents=True)
        path.write_text(text)
    (project / "empty-ucit").mkdir()
    (project / "not-a-llava").mkdir()  # passes the path checks, fails only when loading
    (project / "not-a-llava" / "config.json").write_text('{"model_type": "bert"}')
    return project


@pytest.fixture
def run_copy(trained_run, tmp_path):
    """A copy of the trained run per test, so that one test's damage cannot hide another's."""
    import shutil

    return shutil.copytree(trained_run, tmp_path / "run", symlinks=True)


def test_restart_with_a_missing_model_checks_before_clearing(run_copy):
    before = _files(run_copy / "outputs")
    assert any(name.endswith("adapter_model.safetensors") for name in before)
    with pytest.raises(ConfigError, match=r"\[backbone\] model = './no-such-model'"):
        train(resolve(run_copy, "benchmark.tasks='0'", backbone__model="./no-such-model"), restart=True)
    assert _files(run_copy / "outputs") == before


def test_restart_with_a_missing_data_root_checks_before_clearing(run_copy):
    before = _files(run_copy / "outputs")
    with pytest.raises(ConfigError, match=r"\[benchmark\] root: data folder .*no-such-data not found"):
        train(resolve(run_copy, "benchmark.tasks='0'", "benchmark.root='no-such-data'", benchmark__id="ucit"),
              restart=True)
    assert _files(run_copy / "outputs") == before


QUICK_ARGS = [arg for item in QUICK for arg in ("--set", item)]


@pytest.mark.parametrize("args, code, fragments", [
    (["--model", "./no-such-model"], 2, ["--model", "[backbone] model = './no-such-model'"]),
    (["--model", "./not-a-llava"], 2, ["[backbone] model", "not-a-llava holds a 'bert' model, not a llava-hf"]),
    (["--benchmark", "ucit", "--set", "benchmark.root='no-such-data'"], 2,
     ["[benchmark] root", "no-such-data not found"]),
    (["--benchmark", "ucit", "--set", "benchmark.root='empty-ucit'"], 1, ["ucit data under", "missing"]),
    # several processes: the launcher checks before torchrun starts (nothing is relaunched, no launch record)
    (["--nproc", "2", "--model", "./no-such-model"], 2, ["[backbone] model"]),
    (["--set", "distributed.backend='deepspeed'", "--model", "./no-such-model"], 2, ["[backbone] model"]),
    (["--nproc", "2", "--train-precision", "fp16"], 2, ["--train-precision"]),
    (["--nproc", "2", "--benchmark", "ucit", "--set", "benchmark.root='empty-ucit'"], 1, ["ucit data under"]),
], ids=["model", "model-does-not-load", "data-root", "data-files", "ddp-model", "deepspeed-model", "ddp-precision", "ddp-data-files"])
def test_failing_restart_leaves_every_output_file_unchanged(run_copy, monkeypatch, capsys, args, code, fragments):
    from prism.cli.app import main

    monkeypatch.chdir(run_copy)
    monkeypatch.setenv("COLUMNS", "200")
    before = _files(run_copy / "outputs")
    with pytest.raises(SystemExit) as info:
        main(["train", "--restart", "--tasks", "0", *QUICK_ARGS, *args])
    err = " ".join(capsys.readouterr().err.split())
    assert info.value.code == code, err
    for fragment in fragments:
        assert fragment in err
    assert "Traceback" not in err and "relaunching" not in err
    assert _files(run_copy / "outputs") == before


@pytest.mark.parametrize("relaunched", [True, False], ids=["under-torchrun", "single-process"])
def test_restart_keeps_the_launch_record_of_the_launch_that_restarts(tmp_path, monkeypatch, relaunched):
    """prism's launcher writes results/.../launch.json, then rank 0 clears the run for --restart."""
    from prism.checkpoint.layout import RunLayout
    from prism.engine.task_checkpoints import clear_run as _clear_run

    layout = RunLayout(tmp_path, "synthetic", "ft_lora", "llava")
    for folder in (layout.checkpoint(0), layout.predictions(0), layout.results_dir):
        folder.mkdir(parents=True)
        (folder / "old.json").write_text("{}")
    record = layout.results_dir / "launch.json"
    record.write_text('{"command": ["torchrun"], "processes": 2}')
    if relaunched:
        monkeypatch.setenv("PRISM_WORKER_ARGV", '["train", "--restart"]')
    else:
        monkeypatch.delenv("PRISM_WORKER_ARGV", raising=False)
    _clear_run(layout)
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert left == (["results/synthetic/ft_lora/launch.json"] if relaunched else [])
    if relaunched:
        assert json.loads(record.read_text()) == {"command": ["torchrun"], "processes": 2}
