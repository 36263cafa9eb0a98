"""Step-loop options: gradient checkpointing, metrics.jsonl, trackers, the data stream's sharding."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from prism.engine.data_stream import DataStream
from prism.engine.accelerator import report_to
from prism.engine.loop import train
from prism.errors import ConfigError, UsageError

from .conftest import resolve


def _adapters(project, method="ft_lora"):
    folder = project / "outputs" / "checkpoints" / "synthetic" / method / "Task0_llava"
    return load_file(str(folder / "adapter_model.safetensors"))


def test_gradient_checkpointing_trains_to_the_same_adapters(project, tmp_path, monkeypatch):
    """Recomputing activations changes memory, not results (dropout off: no RNG in the forward)."""
    from transformers import PreTrainedModel

    calls = []
    original = PreTrainedModel.gradient_checkpointing_enable

    def spy(self, *args, **kwargs):
        calls.append(kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(PreTrainedModel, "gradient_checkpointing_enable", spy)
    plain = resolve(project, "benchmark.tasks='0'", "method.ft_lora.dropout=0.0", "train.eval_after_each_task=false")
    train(plain)
    reference = _adapters(project)
    checkpointed = resolve(project, "benchmark.tasks='0'", "method.ft_lora.dropout=0.0",
                           "train.eval_after_each_task=false", "train.gradient_checkpointing=true",
                           project__output_dir=str(tmp_path / "gc"))
    assert not calls
    outcome = train(checkpointed)
    assert calls == [{"gradient_checkpointing_kwargs": {"use_reentrant": False}}]
    other = load_file(str(outcome.layout.checkpoint(0) / "adapter_model.safetensors"))
    assert reference.keys() == other.keys()
    for key in reference:
        torch.testing.assert_close(other[key], reference[key], rtol=1e-4, atol=1e-6)


def test_metrics_jsonl_has_one_line_per_step(project):
    outcome = train(resolve(project, "benchmark.tasks='0'", "train.eval_after_each_task=false"))
    rows = [json.loads(line) for line in (outcome.layout.results_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert all(r["task"] == "colour" and r["loss"] > 0 and r["samples"] == 8 * r["step"] for r in rows)
    state = json.loads((outcome.layout.checkpoint(0) / "prism_state.json").read_text())
    assert state["steps"] == 6


def test_unknown_or_missing_tracker_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown tracker 'tensorbored'"):
        report_to(["tensorbored"])
    import importlib.util
    if importlib.util.find_spec("wandb") is None:
        with pytest.raises(UsageError, match="pip install wandb"):
            report_to(["wandb"])
    assert report_to([]) == []


class _Numbers:
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def batch(self, indices):
        return list(indices)


def test_data_stream_shards_one_global_order_across_ranks():
    single = DataStream(_Numbers(40), 4, seed=3)
    global_order = [single.next() for _ in range(20)]  # two epochs
    ranks = [DataStream(_Numbers(40), 4, seed=3, rank=r, world=2) for r in range(2)]
    sharded = []
    for _ in range(10):
        sharded.extend([ranks[0].next(), ranks[1].next()])
    assert sharded == global_order  # the same samples in the same steps, whatever the world size
    assert sorted(i for b in global_order[:10] for i in b) == list(range(40))


def test_data_stream_resumes_exactly():
    stream = DataStream(_Numbers(30), 4, seed=1)
    for _ in range(9):  # into the second epoch (7 full batches per epoch)
        stream.next()
    state = stream.state()
    expected = [stream.next() for _ in range(12)]
    again = DataStream(_Numbers(30), 4, seed=1)
    again.restore(*state)
    assert [again.next() for _ in range(12)] == expected
    with pytest.raises(ConfigError, match="micro batch 4 on 1"):
        DataStream(_Numbers(30), 2, seed=1).restore(*state)


def test_projector_gets_its_own_learning_rate_when_set():
    from types import SimpleNamespace

    from prism.engine.fit import TaskFitter

    model = torch.nn.Module()
    model.multi_modal_projector = torch.nn.Linear(2, 2)
    model.lora = torch.nn.Linear(2, 2)
    params = list(model.parameters())
    accelerator = SimpleNamespace(device="cpu")
    fitter = TaskFitter(model=model, method=None, dataset=None, seed=0, accelerator=accelerator,
                        train_cfg=SimpleNamespace(projector_lr=None))
    assert fitter._param_groups(params) == [{"params": params}]
    fitter.cfg = SimpleNamespace(projector_lr=1e-5)
    groups = fitter._param_groups(params)
    assert groups[0]["params"] == list(model.lora.parameters()) and "lr" not in groups[0]
    assert groups[1]["params"] == list(model.multi_modal_projector.parameters()) and groups[1]["lr"] == 1e-5


def test_per_task_override_changes_that_task_only(project):
    outcome = train(resolve(project, "benchmark.tasks='0-1'", "train.eval_after_each_task=false",
                            'train.overrides = { shape_mc = { max_steps = 3, global_batch_size = 4 } }'))
    rows = [json.loads(line) for line in (outcome.layout.results_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["task"] == "colour"] == list(range(1, 7))
    shape = [r for r in rows if r["task"] == "shape_mc"]
    assert [r["step"] for r in shape] == [1, 2, 3] and shape[-1]["samples"] == 12


@pytest.mark.parametrize("setting, grouped", [(None, True), (True, True), (False, False)])
def test_length_grouping_is_on_unless_switched_off(setting, grouped):
    from types import SimpleNamespace

    from prism.engine.fit import TaskFitter

    class Records:
        def __len__(self):
            return 8

        def modality_lengths(self):
            return [5, -3, 7, 2, -9, 4, 6, -1]

    fitter = TaskFitter(model=torch.nn.Linear(1, 1), method=None, dataset=Records(), seed=0,
                        accelerator=SimpleNamespace(device="cpu"),
                        train_cfg=SimpleNamespace(group_by_modality_length=setting))
    stream = fitter._stream(2, 0, 1, 1)
    assert (stream.lengths is not None) is grouped
    assert stream.group == (2 if grouped else 0)
