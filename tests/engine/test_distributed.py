"""`prism train --nproc 2` on CPU: relaunched under torchrun (gloo), one global batch per step,
rank 0 writes the same layout as a single-process run, and the result matches it; both ranks
generate the evaluation, and their merged predictions are one process's on the same checkpoints."""

from __future__ import annotations

import json
import shutil

import pytest
from safetensors.torch import load_file

pytestmark = pytest.mark.slow


def _files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def runs(ewc_run):
    """The single-process run is shared with the DeepSpeed tests (tests/engine/conftest.py)."""
    return {"single": ewc_run("single"), "ddp": ewc_run("ddp", "--nproc", "2")}


def test_two_processes_write_the_single_process_layout(runs):
    single, ddp = runs["single"][0] / "outputs", runs["ddp"][0] / "outputs"
    for part in ("checkpoints", "predictions"):
        assert _files(ddp / part) == _files(single / part)
    results = ddp / "results" / "synthetic" / "ewc"
    launch = json.loads((results / "launch.json").read_text())
    assert launch["processes"] == 2 and "prism.engine.torchrun" in launch["command"]
    assert launch["arguments"][:2] == ["train", "--tasks"]
    run = json.loads((results / "run.json").read_text())
    assert run["environment"]["world_size"] == 2 and run["global_batch_size"] == 8
    steps = [json.loads(line)["step"] for line in (results / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6] * 2  # rank 0 alone logs
    assert "relaunching on 2 processes" in runs["ddp"][1].stderr
    assert runs["ddp"][1].stderr.count("ewc on synthetic") == 1  # one matrix printed, by rank 0


def test_two_processes_take_the_same_optimisation_steps(runs):
    """Each rank trains on its half of every global batch; the gradient is the global mean, so the
    adapters (and EWC's Fisher, averaged over ranks) match a single process up to float rounding."""
    for task in (0, 1):
        folder = f"outputs/checkpoints/synthetic/ewc/Task{task}_llava"
        single = load_file(str(runs["single"][0] / folder / "adapter_model.safetensors"))
        ddp = load_file(str(runs["ddp"][0] / folder / "adapter_model.safetensors"))
        assert single.keys() == ddp.keys()
        for key in single:
            assert (single[key] - ddp[key]).abs().max() < 2e-3, key
        state_single = load_file(str(runs["single"][0] / folder / "prism_state.safetensors"))
        state_ddp = load_file(str(runs["ddp"][0] / folder / "prism_state.safetensors"))
        for key in state_single:
            if ".fisher." in key:
                scale = float(state_single[key].abs().max()) or 1.0
                assert float((state_single[key] - state_ddp[key]).abs().max()) <= 0.05 * scale, key


def _predictions(project):
    folder = project / "outputs" / "predictions" / "synthetic" / "ewc"
    return {path.relative_to(folder).as_posix(): [json.loads(line) for line in path.read_text().splitlines()]
            for path in sorted(folder.rglob("*.jsonl"))}


def test_both_ranks_generate_every_task_and_merge_into_one_process_answers(runs, tmp_path, synthetic_data):
    """Each rank generated part of every task's predictions (metadata.rank); one process predicting from
    the same checkpoints (`prism infer`) gives the same answers, in whatever order the lines were merged."""
    from tests.conftest import run_cli
    from tests.engine.conftest import EWC_RUN, new_project

    sharded = _predictions(runs["ddp"][0])
    assert len(sharded) == 3  # Task0: task 0; Task1: tasks 0 and 1
    for name, lines in sharded.items():
        assert len(lines) == 4 and {line["metadata"]["rank"] for line in lines} == {0, 1}, name
    assert not list((runs["ddp"][0] / "outputs" / "predictions").rglob(".shards"))
    alone = new_project(tmp_path, synthetic_data)
    shutil.copytree(runs["ddp"][0] / "outputs" / "checkpoints", alone / "outputs" / "checkpoints")
    result = run_cli(["infer", *EWC_RUN], cwd=alone, env={"OMP_NUM_THREADS": "1"})
    assert result.code == 0, str(result)
    single = _predictions(alone)
    assert single.keys() == sharded.keys()
    for name in single:
        answers = {str(line["question_id"]): (line["text"], line["model_id"]) for line in single[name]}
        assert {str(line["question_id"]): (line["text"], line["model_id"]) for line in sharded[name]} == answers, name
        assert {line["metadata"]["rank"] for line in single[name]} == {0}


def test_two_nodes_on_localhost_train_the_adapters_of_two_processes(runs, tmp_path, synthetic_data):
    """`--nnodes 2`: one `prism train` per "node" (here both on localhost, one process each) meets at
    node 0's address; the run is the `--nproc 2` run: same adapters, same predictions."""
    import os
    import subprocess
    import sys

    from prism.engine.launch import free_port
    from tests.engine.conftest import EWC_RUN, new_project

    project = new_project(tmp_path, synthetic_data)
    port = str(free_port())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    nodes = [subprocess.Popen([sys.executable, "-m", "prism", "train", *EWC_RUN, "--nnodes", "2", "--node-rank",
                               str(rank), "--master-addr", "127.0.0.1", "--master-port", port],
                              cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in (0, 1)]
    outputs = [node.communicate(timeout=600) for node in nodes]
    for node, (_, err) in zip(nodes, outputs):
        assert node.returncode == 0, err
    assert "on node 0 of 2 (2 in all, rendezvous 127.0.0.1:" in outputs[0][1]
    assert outputs[0][1].count("ewc on synthetic") == 1 and "ewc on synthetic" not in outputs[1][1]
    results = project / "outputs" / "results" / "synthetic" / "ewc"
    records = [json.loads((results / name).read_text()) for name in ("launch.json", "launch.node1.json")]
    assert [(r["nnodes"], r["node_rank"], r["master_addr"]) for r in records] == [(2, 0, "127.0.0.1"), (2, 1, "127.0.0.1")]
    assert json.loads((results / "run.json").read_text())["environment"]["world_size"] == 2
    for task in (0, 1):
        folder = f"outputs/checkpoints/synthetic/ewc/Task{task}_llava"
        nodes_adapters = load_file(str(project / folder / "adapter_model.safetensors"))
        ddp = load_file(str(runs["ddp"][0] / folder / "adapter_model.safetensors"))
        assert nodes_adapters.keys() == ddp.keys()
        for key in ddp:
            assert (nodes_adapters[key] - ddp[key]).abs().max() < 1e-6, key
    theirs = _predictions(runs["ddp"][0])
    for name, lines in _predictions(project).items():
        assert sorted((str(x["question_id"]), x["text"]) for x in lines) == \
            sorted((str(x["question_id"]), x["text"]) for x in theirs[name]), name


def test_two_processes_count_the_same_samples_and_tokens(runs):
    """Cost accounting sums over the ranks: the same global batches give the same counts."""
    def costs(name):
        return json.loads((runs[name][0] / "outputs" / "results" / "synthetic" / "ewc" / "run.json").read_text())["costs"]

    single, ddp = costs("single"), costs("ddp")
    assert single["devices"] == 1 and ddp["devices"] == 2
    for name, task in single["tasks"].items():
        assert ddp["tasks"][name]["train"]["samples"] == task["train"]["samples"] == 6 * 8
        assert ddp["tasks"][name]["train"]["tokens"] == task["train"]["tokens"] > 0
        assert ddp["tasks"][name]["peak_memory_bytes"] > 0


def test_a_method_whose_loss_uses_its_own_modules_takes_the_single_process_steps_under_ddp(tmp_path, synthetic_data):
    """modal_prompt's loss maps the prompts through its MLP outside the model's forward: under DDP the
    loss runs inside the wrapped module's forward (LossModule), so DDP sees those parameters used
    (before: "Expected to mark a variable ready only once"), and 2 processes learn what one does."""
    from tests.conftest import run_cli
    from tests.engine.conftest import new_project

    args = ["train", "--tasks", "0", "--method", "modal_prompt", "--set", "train.max_steps=2",
            "--set", "train.global_batch_size=8", "--set", "benchmark.max_train_samples=16",
            "--set", "benchmark.max_test_samples=4", "--set", "infer.batch_size=2"]
    state = "outputs/checkpoints/synthetic/modal_prompt/Task0_llava/prism_state.safetensors"
    learned = {}
    for name, extra in (("one", []), ("ddp", ["--nproc", "2"])):
        (tmp_path / name).mkdir()
        project = new_project(tmp_path / name, synthetic_data)
        result = run_cli([*args, *extra], cwd=project, env={"OMP_NUM_THREADS": "1"})
        assert result.code == 0, str(result)
        learned[name] = load_file(str(project / state))
    assert any("mlps" in key for key in learned["one"]) and any("prompts" in key for key in learned["one"])
    for key, tensor in learned["one"].items():
        assert (tensor - learned["ddp"][key]).abs().max() < 1e-5, key
