"""The core schema: defaults, unknown keys, constraints, and task selection."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from prism.config import (
    BackboneConfig,
    BenchmarkConfig,
    InferConfig,
    PluginsConfig,
    PrismConfig,
    ProjectConfig,
    TrainConfig,
    task_selection,
)
from prism.errors import ConfigError


def test_defaults():
    cfg = PrismConfig()
    assert cfg.project.name == "prism-demo" and cfg.project.output_dir == "outputs" and cfg.project.seed == 42
    assert cfg.backbone.id == "llava" and cfg.backbone.model == "builtin:tiny-llava"
    assert cfg.backbone.train_precision == "fp32" and cfg.backbone.attn == "auto"
    assert cfg.benchmark.id == "synthetic" and cfg.benchmark.tasks is None
    assert cfg.method.id == "ft_lora" and cfg.method.tables == {}
    assert cfg.train.lr == 2e-4 and cfg.train.max_steps is None and cfg.train.lr_scheduler == "cosine"
    assert cfg.infer.batch_size == 32 and cfg.infer.max_new_tokens is None
    assert cfg.plugins.disable == []


@pytest.mark.parametrize("model", [ProjectConfig, BackboneConfig, BenchmarkConfig, TrainConfig,
                                   InferConfig, PluginsConfig, PrismConfig])
def test_unknown_keys_are_errors(model):
    with pytest.raises(ValidationError) as info:
        model.model_validate({"no_such_key": 1})
    assert info.value.errors()[0]["type"] == "extra_forbidden"


@pytest.mark.parametrize("table, values", [
    ("train", {"lr": 0}),
    ("train", {"lr": -1e-4}),
    ("train", {"warmup_ratio": 1.0}),
    ("train", {"global_batch_size": 0}),
    ("train", {"max_steps": 0}),
    ("train", {"lr_scheduler": "step"}),
    ("train", {"global_batch_size": 8, "micro_batch_size": 16}),
    ("infer", {"num_beams": 0}),
    ("infer", {"temperature": -0.1}),
    ("backbone", {"train_precision": "fp8"}),
    ("backbone", {"attn": "flash"}),
    ("benchmark", {"max_train_samples": 0}),
    ("benchmark", {"tasks": True}),
    ("benchmark", {"tasks": {"a": 1}}),
    ("project", {"seed": -1}),
])
def test_constraints(table, values):
    with pytest.raises(ValidationError):
        PrismConfig.model_validate({table: values})


def test_method_tables_must_be_tables():
    cfg = PrismConfig.model_validate({"method": {"id": "ewc", "ewc": {"ewc_lambda": 5}}})
    assert cfg.method.tables == {"ewc": {"ewc_lambda": 5}} and cfg.method.table("ewc") == {"ewc_lambda": 5}
    assert cfg.model_dump()["method"] == {"id": "ewc", "ewc": {"ewc_lambda": 5}}
    with pytest.raises(ValidationError):
        PrismConfig.model_validate({"method": {"lr": 3}})


def test_tasks_accepts_an_integer():
    assert BenchmarkConfig(tasks=3).tasks == [3]
    assert BenchmarkConfig(tasks="0-2").tasks == "0-2"
    assert BenchmarkConfig(tasks=[0, "b"]).tasks == [0, "b"]


NAMES = ["colour", "count", "shape", "position", "size"]


@pytest.mark.parametrize("spec, expected", [
    (None, [0, 1, 2, 3, 4]),
    ("all", [0, 1, 2, 3, 4]),
    ("ALL", [0, 1, 2, 3, 4]),
    ("", [0, 1, 2, 3, 4]),
    ("0-4", [0, 1, 2, 3, 4]),
    ("1 - 3", [1, 2, 3]),
    ("2-2", [2]),
    ("0,2,3", [0, 2, 3]),
    (" 3 , 1 ", [3, 1]),
    ("4", [4]),
    (2, [2]),
    ([0, 2], [0, 2]),
    ([4, 0], [4, 0]),
    (["0-1", 4], [0, 1, 4]),
    ("shape,colour", [2, 0]),
    (["size", "count"], [4, 1]),
    ("Shape", [2]),
    (["0-1", "size"], [0, 1, 4]),
])
def test_task_selection(spec, expected):
    assert task_selection(spec, NAMES) == expected


@pytest.mark.parametrize("spec, fragment", [
    ("0-5", "out of range"),
    (7, "out of range"),
    ([0, 9], "out of range"),
    ("-1", "out of range"),
    ("3-1", "backwards"),
    ("shap", "did you mean 'shape'"),
    ("nothing", "unknown task 'nothing'"),
    ("0,0", "listed twice"),
    ("0-2,1", "listed twice"),
    ("0,,2", "empty entry"),
    ([], "selects no task"),
    (True, "expected"),
    ([1.5], "not a task index"),
])
def test_task_selection_errors(spec, fragment):
    with pytest.raises(ConfigError) as info:
        task_selection(spec, NAMES)
    assert fragment in str(info.value)
    assert "benchmark.tasks" in str(info.value)
    assert info.value.exit_code == 2


def test_task_selection_error_lists_the_tasks():
    with pytest.raises(ConfigError) as info:
        task_selection("9", NAMES)
    assert "5 tasks: 0-4" in str(info.value) and "colour" in str(info.value)
