"""`prism train --nproc 2` on CPU: relaunched under torchrun (gloo), one global batch per step,
rank 0 writes the same layout as a single-process run, and the result matches it."""

from __future__ import annotations

import json

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
    assert launch["processes"] == 2 and "torch.distributed.run" in launch["command"]
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
