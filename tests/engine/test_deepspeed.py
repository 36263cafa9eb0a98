"""`prism train --nproc 2 --set distributed.backend="deepspeed"` on CPU: DeepSpeed ZeRO-2 and ZeRO-3
through accelerate, under torchrun (gloo). Same checkpoint layout as a single process, rank 0 alone
writing, the same optimisation steps (global-batch mean, one clipping, accumulation inside
prism's step), and a step checkpoint written under ZeRO-3 resumes to exactly the uninterrupted run.

DeepSpeed compiles its shared-memory extension once into <repo>/.cache/torch_extensions.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess

import pytest
from safetensors.torch import load_file

from tests.engine.conftest import EWC_RUN, new_project, torch_extensions_dir

# the runs import deepspeed in their own processes; this one only needs to know it is there
if importlib.util.find_spec("deepspeed") is None:
    pytest.skip("deepspeed is not installed (pip install -e '.[test]')", allow_module_level=True)
pytestmark = pytest.mark.slow

#: ZeRO-2 from [distributed] zero_stage (the default 2), 2 samples per forward: 2 accumulation
#: steps per process in each optimizer step (the engine must step once, after the second)
ZERO2 = ["--nproc", "2", "--set", "distributed.backend=deepspeed", "--set", "train.micro_batch_size=2"]
#: the zero3 preset; micro batch 4 per process (ZeRO-3 steps are slow on CPU: no accumulation here)
ZERO3 = ["--nproc", "2", "--set", "distributed.backend=deepspeed", "--set", "distributed.deepspeed_config=zero3"]
RESULTS = "outputs/results/synthetic/ewc"
CHECKPOINTS = "outputs/checkpoints/synthetic/ewc"


def _files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def _metrics(project):
    return [json.loads(line) for line in (project / RESULTS / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(ewc_run):
    return {"single": ewc_run("single"), "zero2": ewc_run("zero2", *ZERO2), "zero3": ewc_run("zero3", *ZERO3)}


@pytest.mark.parametrize("engine, stage, micro, accumulation", [("zero2", 2, 2, 2), ("zero3", 3, 4, 1)])
def test_deepspeed_writes_the_single_process_layout(runs, engine, stage, micro, accumulation):
    single, (project, result) = runs["single"][0], runs[engine]
    for part in ("checkpoints", "predictions"):
        assert _files(project / "outputs" / part) == _files(single / "outputs" / part)
    # both ranks generated every task's evaluation, with the weights ZeRO-3 gathered after the fit
    for path in (project / "outputs" / "predictions").rglob("*.jsonl"):
        ranks = {json.loads(line)["metadata"]["rank"] for line in path.read_text().splitlines()}
        assert ranks == {0, 1}, path
    results = project / RESULTS
    launch = json.loads((results / "launch.json").read_text())
    assert launch["backend"] == "deepspeed" and launch["processes"] == 2
    assert launch["environment"]["TORCH_EXTENSIONS_DIR"] == str(torch_extensions_dir())
    assert json.loads((results / "run.json").read_text())["environment"]["world_size"] == 2
    # the effective DeepSpeed config: prism's batch geometry, clipping and precision filled in
    config = json.loads((results / "deepspeed_config.json").read_text())
    assert config["zero_optimization"]["stage"] == stage
    assert (config["train_micro_batch_size_per_gpu"], config["gradient_accumulation_steps"]) == (micro, accumulation)
    assert config["gradient_clipping"] == 1.0 and config["bf16"]["enabled"] is False
    assert "train_batch_size" not in config and "optimizer" not in config
    if stage == 3:  # filled from the language model's hidden size (128), not left to accelerate
        assert config["zero_optimization"]["stage3_param_persistence_threshold"] == 1280
    assert [row["step"] for row in _metrics(project)] == [1, 2, 3, 4, 5, 6] * 2  # rank 0 alone logs
    assert result.stderr.count("ewc on synthetic") == 1  # one matrix printed, by rank 0


@pytest.mark.parametrize("engine", ["zero2", "zero3"])
def test_deepspeed_takes_the_single_process_steps(runs, engine):
    """Each rank trains on its share of every global batch; the engine averages over ranks, steps once
    per prism step and clips once, so adapters, EWC state and gradient norms match one process."""
    single, project = runs["single"][0], runs[engine][0]
    for task in (0, 1):
        folder = f"{CHECKPOINTS}/Task{task}_llava"
        mine, theirs = (load_file(str(p / folder / "adapter_model.safetensors")) for p in (project, single))
        assert mine.keys() == theirs.keys()
        for key in theirs:
            assert (mine[key] - theirs[key]).abs().max() < 2e-3, key
        state, state_single = (load_file(str(p / folder / "prism_state.safetensors")) for p in (project, single))
        assert state.keys() == state_single.keys()
        for key in state_single:
            scale = float(state_single[key].abs().max()) or 1.0
            assert float((state[key] - state_single[key]).abs().max()) <= 0.05 * scale, key
    # the engine's gradient norm (before its clipping) is the single process's: the global-batch
    # mean, not divided again by the accumulation steps
    for mine, theirs in zip(_metrics(project), _metrics(single), strict=True):
        assert mine["grad_norm"] == pytest.approx(theirs["grad_norm"], rel=1e-3), mine


#: runs in each torchrun worker: prism's worker, stopped (on every rank) once the step checkpoint
#: of the given step of the first task has been written
STOP_DRIVER = r'''
import os
import torch.distributed as dist
from prism.engine import step_checkpoint

stop = int(os.environ["PRISM_TEST_STOP_STEP"])
original = step_checkpoint.StepCheckpointer.save

def save(self, state):
    original(self, state)
    if len(self.info["tasks_seen"]) == 1 and state.step == stop:
        dist.barrier()  # rank 0 has written it
        os._exit(3)

step_checkpoint.StepCheckpointer.save = save
from prism.__main__ import main as worker_main
worker_main()
'''


def test_zero3_step_checkpoint_resumes_to_the_uninterrupted_run(runs, tmp_path, synthetic_data):
    from prism.config.schema import DistributedConfig
    from prism.engine.launch import launch_command

    (tmp_path / "project").mkdir()
    project = new_project(tmp_path / "project", synthetic_data)
    # the first task only: its checkpoint is the uninterrupted two-task run's first one
    assert EWC_RUN[:2] == ["--tasks", "0-1"]
    args = ["train", "--tasks", "0", *EWC_RUN[2:], *ZERO3, "--set", "train.save_every_steps=2"]
    driver = tmp_path / "driver.py"
    driver.write_text(STOP_DRIVER)
    # prism's own torchrun command, with the driver in place of `-m prism`
    distributed = DistributedConfig(nproc=2, backend="deepspeed", deepspeed_config="zero3")
    env = dict(os.environ, OMP_NUM_THREADS="1", TORCH_EXTENSIONS_DIR=str(torch_extensions_dir()),
               PRISM_TEST_STOP_STEP="2", COLUMNS="200")
    command, env = launch_command(distributed, args, project, env=env)
    command = command[:command.index("-m", command.index("--nproc_per_node=2"))] + [str(driver)]
    stopped = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=600)
    assert stopped.returncode != 0, stopped.stderr[-3000:]
    steps = project / CHECKPOINTS / "steps" / "Task0_llava"
    progress = json.loads((steps / "progress.json").read_text())
    assert progress["step"] == 2
    assert progress["engine"] == {"backend": "deepspeed", "zero_stage": 3, "processes": 2}
    tensors = load_file(str(steps / "state.safetensors"))
    for rank in (0, 1):  # each rank's partition of AdamW's state, gathered to rank 0
        assert any(key.startswith(f"optimizer.zero.{rank}.") and key.endswith("exp_avg") for key in tensors)
    assert not (project / CHECKPOINTS / "Task0_llava").exists()

    from tests.conftest import run_cli

    resumed = run_cli(args, cwd=project, env={"OMP_NUM_THREADS": "1",
                                              "TORCH_EXTENSIONS_DIR": str(torch_extensions_dir())})
    assert resumed.code == 0, str(resumed)  # a str: pytest prints all of it
    reference = runs["zero3"][0]
    for name in ("adapter_model.safetensors", "prism_state.safetensors"):  # adapters, EWC's θ* and Fisher
        mine = load_file(str(project / CHECKPOINTS / "Task0_llava" / name))
        theirs = load_file(str(reference / CHECKPOINTS / "Task0_llava" / name))
        assert mine.keys() == theirs.keys()
        for key in theirs:
            assert mine[key].equal(theirs[key]), (name, key)
    # the stopped run logged steps 1-2, the resumed one continued at step 3
    assert [(row["task"], row["step"]) for row in _metrics(project)] == [("colour", s) for s in range(1, 7)]
    assert not (project / CHECKPOINTS / "steps" / "Task0_llava").exists()
