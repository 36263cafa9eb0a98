"""Crash safety: a run killed (SIGKILL) mid-task or mid-save, or stopped with Ctrl-C, resumes
to exactly the adapters of an uninterrupted run; the same seed gives bit-identical adapters."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.conftest import run_cli

pytestmark = pytest.mark.slow

#: two tasks, 24 steps each, a step checkpoint every 4 steps, small evaluation
RUN = ["--tasks", "0-1", "--set", "train.max_steps=24", "--set", "train.global_batch_size=4",
       "--set", "benchmark.max_train_samples=64", "--set", "benchmark.max_test_samples=4",
       "--set", "train.save_every_steps=4", "--set", "method.ft_lora.dropout=0.1"]

#: runs prism's CLI with one fault injected (chosen by PRISM_TEST_FAULT), then never returns normally
DRIVER = r'''
import os, signal, sys
from prism.checkpoint import store
from prism.engine import step_checkpoint

fault, position, step = os.environ["PRISM_TEST_FAULT"].split(":")
position, step = int(position), int(step)

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if fault == "after-step-save":  # killed right after a step checkpoint landed
    original = step_checkpoint.StepCheckpointer.save
    def save(self, state):
        original(self, state)
        if len(self.info["tasks_seen"]) == position + 1 and state.step == step:
            die()
    step_checkpoint.StepCheckpointer.save = save
elif fault == "between-renames":  # killed after the old step checkpoint was set aside
    original_replace = store.replace_folder
    def replace(tmp, final):
        if final.parent.name == "steps" and final.exists() and "Task" in final.name:
            progress = (tmp / step_checkpoint.PROGRESS).read_text()
            import json
            if json.loads(progress)["step"] == step and final.name.startswith(f"Task{position}_"):
                os.rename(final, final.with_name("." + final.name + ".old-1-1"))
                die()
        return original_replace(tmp, final)
    store.replace_folder = replace
elif fault == "mid-write":  # killed while the step checkpoint's files are being written
    original_save = step_checkpoint.save_step_checkpoint
    def save_partial(folder, state):
        if state.step == step and folder.name.startswith(f"Task{position}_"):
            def fill(tmp):
                (tmp / step_checkpoint.TENSORS).write_bytes(b"\0" * 100)
                die()
            store.write_checkpoint(folder, fill)
        return original_save(folder, state)
    step_checkpoint.save_step_checkpoint = save_partial

from prism.cli.app import main
main(sys.argv[1:])
'''


def _adapters(project: Path, task: int = 1) -> dict:
    return load_file(str(project / "outputs" / "checkpoints" / "synthetic" / "ft_lora" / f"Task{task}_llava"
                         / "adapter_model.safetensors"))


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].equal(b[key]), key


def _metrics(project: Path) -> list[dict]:
    path = project / "outputs" / "results" / "synthetic" / "ft_lora" / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def _driver(tmp_path: Path, project: Path, fault: str, *extra: str) -> subprocess.CompletedProcess:
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    env = dict(os.environ, PRISM_TEST_FAULT=fault, COLUMNS="200")
    return subprocess.run([sys.executable, str(script), "train", *RUN, *extra], cwd=project, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, synthetic_data) -> dict:
    """Adapters of an uninterrupted run, and a second identical run's (reproducibility)."""
    import shutil

    from tests.conftest import REPO

    out = {}
    for name in ("first", "second"):
        project = tmp_path_factory.mktemp(f"reference-{name}")
        shutil.copy(REPO / "prism.toml", project / "prism.toml")
        (project / "data").mkdir()
        (project / "data" / "synthetic").symlink_to(synthetic_data, target_is_directory=True)
        result = run_cli(["train", *RUN], cwd=project)
        assert result.code == 0, str(result)
        out[name] = project
    return out


def test_same_seed_gives_bit_identical_adapters(reference):
    for task in (0, 1):
        first = reference["first"] / "outputs/checkpoints/synthetic/ft_lora" / f"Task{task}_llava"
        second = reference["second"] / "outputs/checkpoints/synthetic/ft_lora" / f"Task{task}_llava"
        # bit-identical tensors (the file bytes may differ: safetensors writes its metadata map in hash order)
        _assert_same(load_file(str(first / "adapter_model.safetensors")),
                     load_file(str(second / "adapter_model.safetensors")))
    # finished tasks leave no step checkpoint behind
    assert not any((reference["first"] / "outputs/checkpoints/synthetic/ft_lora/steps").glob("Task*"))
    rows = _metrics(reference["first"])
    assert [r["step"] for r in rows if r["task"] == "colour"] == list(range(1, 25))
    assert all({"loss", "lr", "grad_norm", "samples_per_s"} <= r.keys() for r in rows)


@pytest.mark.parametrize("fault", ["after-step-save:1:12", "between-renames:1:16", "mid-write:1:16",
                                   "after-step-save:0:8"])
def test_sigkill_then_resume_equals_uninterrupted(fault, project, tmp_path, reference):
    killed = _driver(tmp_path, project, fault)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    position = int(fault.split(":")[1])
    checkpoints = project / "outputs/checkpoints/synthetic/ft_lora"
    if position == 1:  # task 0 finished before the kill and must stay loadable
        from prism.checkpoint import store
        assert store.verify_checkpoint(checkpoints / "Task0_llava") == []
        task0_mtime = (checkpoints / "Task0_llava" / "manifest.json").stat().st_mtime_ns

    resumed = run_cli(["train", *RUN], cwd=project)
    assert resumed.code == 0, str(resumed)
    _assert_same(_adapters(project, 1), _adapters(reference["first"], 1))
    _assert_same(_adapters(project, 0), _adapters(reference["first"], 0))
    if position == 1:
        assert (checkpoints / "Task0_llava" / "manifest.json").stat().st_mtime_ns == task0_mtime  # not retrained
        steps = [r["step"] for r in _metrics(project) if r["task"] == "shape_mc"]
        saved = int(fault.split(":")[2]) - (4 if fault.startswith(("between", "mid")) else 0)
        # the resumed process continued after the last complete step checkpoint
        assert steps == list(range(1, int(fault.split(":")[2]) + 1)) + list(range(saved + 1, 25))
    assert not list(checkpoints.glob(".*")) and not list((checkpoints / "steps").glob(".*"))


def test_sigkill_with_data_loader_workers_then_resume_equals_uninterrupted(project, tmp_path, reference):
    """Two workers decode ahead of the step loop: a kill loses their prefetched batches, never the
    position; the resumed run (workers again) ends at the adapters of the reference run, whose
    data were decoded with the default number of workers (the count never changes the data)."""
    workers = ("--set", "train.num_workers=2")
    killed = _driver(tmp_path, project, "after-step-save:1:12", *workers)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    resumed = run_cli(["train", *RUN, *workers], cwd=project)
    assert resumed.code == 0, str(resumed)
    _assert_same(_adapters(project, 1), _adapters(reference["first"], 1))
    _assert_same(_adapters(project, 0), _adapters(reference["first"], 0))
    steps = [r["step"] for r in _metrics(project) if r["task"] == "shape_mc"]
    assert steps == list(range(1, 13)) + list(range(13, 25))  # continued after step 12, replaying nothing


def test_asynchronous_sigkill_during_training(project, reference):
    """A kill from outside at an arbitrary moment (not at a chosen line)."""
    env = dict(os.environ, COLUMNS="200")
    proc = subprocess.Popen([sys.executable, "-m", "prism", "train", *RUN], cwd=project, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    steps_dir = project / "outputs/checkpoints/synthetic/ft_lora/steps/Task1_llava"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not (steps_dir / "manifest.json").exists():
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = run_cli(["train", *RUN], cwd=project)
    assert resumed.code == 0, str(resumed)
    _assert_same(_adapters(project, 1), _adapters(reference["first"], 1))


def test_ctrl_c_saves_a_step_checkpoint_and_exits_130(project, reference):
    env = dict(os.environ, COLUMNS="200")
    proc = subprocess.Popen([sys.executable, "-m", "prism", "train", *RUN, "--set", "train.save_every_steps=0"],
                            cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = project / "outputs/results/synthetic/ft_lora/metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and any('"shape_mc"' in line for line in metrics.read_text().splitlines()):
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr[-2000:]
    assert "interrupted" in stderr and "Traceback" not in stderr
    progress = json.loads((project / "outputs/checkpoints/synthetic/ft_lora/steps/Task1_llava/progress.json")
                          .read_text())
    assert 1 <= progress["step"] < 24
    resumed = run_cli(["train", *RUN, "--set", "train.save_every_steps=0"], cwd=project)
    assert resumed.code == 0, str(resumed)
    _assert_same(_adapters(project, 1), _adapters(reference["first"], 1))
