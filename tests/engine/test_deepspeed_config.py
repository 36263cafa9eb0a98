"""The DeepSpeed config of a run (presets, JSON files, [distributed] zero_stage/offload), prism's own
values filled in per task, the errors, the launcher's early check, and the step-checkpoint layout
of ZeRO optimizer partitions. No DeepSpeed import: these run without it."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from prism.config.schema import DistributedConfig
from prism.engine.deepspeed_config import (PRESETS, built_config, load_deepspeed_config, preset_config,
                                           task_config)
from prism.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

GEOMETRY = dict(micro_batch=2, accumulation=2, processes=2, max_grad_norm=1.0, precision="no", hidden_size=128)


def _ds(**settings) -> DistributedConfig:
    return DistributedConfig(backend="deepspeed", **settings)


# -- presets ----------------------------------------------------------------------------------------
def test_presets_are_the_configs_zero_stage_and_offload_describe():
    assert built_config(2, False) == preset_config("zero2")
    assert built_config(3, False) == preset_config("zero3")
    assert built_config(3, True) == preset_config("zero3_offload")
    for name in PRESETS:
        config = preset_config(name)
        # prism's step loop owns these: "auto" (filled per task), never fixed in a preset
        assert config["train_micro_batch_size_per_gpu"] == config["gradient_accumulation_steps"] == "auto"
        assert config["gradient_clipping"] == "auto"
        assert not {"train_batch_size", "optimizer", "scheduler"} & config.keys()


def test_presets_ship_as_package_data(repo_root):
    package_data = tomllib.loads((repo_root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "config/deepspeed/*.json" in package_data["prism"]
    for file in PRESETS.values():
        assert (repo_root / "src" / "prism" / "config" / "deepspeed" / file).is_file()


# -- where the config comes from --------------------------------------------------------------------
def test_the_config_comes_from_zero_stage_a_preset_or_a_file(tmp_path):
    built = load_deepspeed_config(_ds(zero_stage=3, offload=True), tmp_path)
    assert (built.zero_stage, built.offload) == (3, True)
    assert built.source == "zero_stage = 3, offload = true"
    preset = load_deepspeed_config(_ds(deepspeed_config="zero3"), tmp_path)
    assert (preset.zero_stage, preset.offload, preset.source) == (3, False, "preset zero3")
    (tmp_path / "ds").mkdir()
    mine = {"zero_optimization": {"stage": 2}, "train_micro_batch_size_per_gpu": "auto"}
    (tmp_path / "ds" / "mine.json").write_text(json.dumps(mine))
    relative = load_deepspeed_config(_ds(deepspeed_config="ds/mine.json"), tmp_path)  # relative to the project
    assert relative.config == mine and relative.source == f"file {tmp_path / 'ds' / 'mine.json'}"
    absolute = load_deepspeed_config(_ds(deepspeed_config=str(tmp_path / "ds" / "mine.json")), tmp_path / "elsewhere")
    assert absolute.config == mine
    # prism init writes zero_stage = 2 out: the default is no conflict, the file decides
    assert load_deepspeed_config(_ds(zero_stage=2, deepspeed_config="zero3"), tmp_path,
                                 {"distributed.zero_stage": "prism.toml:150"}).zero_stage == 3


@pytest.mark.parametrize("value, content, message", [
    ("zero4", None, "unknown preset 'zero4'"),
    ("zer3", None, "did you mean 'zero3'?"),
    ("missing.json", None, "cannot read"),
    ("bad.json", '{"zero_optimization": {"stage": 2},}', "not valid JSON (line 1"),
    ("list.json", "[1, 2]", "holds a JSON list, not an object"),
    ("nostage.json", '{"train_micro_batch_size_per_gpu": 2}', "no zero_optimization.stage"),
    ("stage1.json", '{"zero_optimization": {"stage": 1}}', "prism runs ZeRO stages 2 and 3"),
    ("adam.json", '{"zero_optimization": {"stage": 2}, "optimizer": {"type": "AdamW"}}', "has an 'optimizer' section"),
    ("sched.json", '{"zero_optimization": {"stage": 3}, "scheduler": {"type": "WarmupLR"}}', "'scheduler' section"),
])
def test_a_config_that_cannot_work_is_a_config_error(tmp_path, value, content, message):
    if content is not None:
        (tmp_path / value).write_text(content)
    with pytest.raises(ConfigError) as error:
        load_deepspeed_config(_ds(deepspeed_config=value), tmp_path)
    assert "[distributed] deepspeed_config" in str(error.value)
    assert message in str(error.value)
    assert error.value.exit_code == 2


@pytest.mark.parametrize("settings, message", [
    (dict(zero_stage=3, deepspeed_config="zero2"), "[distributed] zero_stage = 3 (--set) disagrees"),
    (dict(offload=True, deepspeed_config="zero3"), "[distributed] offload = true (--set) disagrees"),
])
def test_an_explicit_stage_or_offload_must_agree_with_the_file(tmp_path, settings, message):
    sources = {f"distributed.{key}": "--set" for key in settings}
    with pytest.raises(ConfigError, match=r"disagrees with \[distributed\] deepspeed_config") as error:
        load_deepspeed_config(_ds(**settings), tmp_path, sources)
    assert message in str(error.value)


# -- prism's values, per task -----------------------------------------------------------------------
def test_prism_fills_batch_geometry_clipping_precision_and_bucket_sizes():
    preset = preset_config("zero3_offload")
    config = task_config(preset, **GEOMETRY)
    assert preset["train_micro_batch_size_per_gpu"] == "auto"  # the preset itself is untouched
    assert (config["train_micro_batch_size_per_gpu"], config["gradient_accumulation_steps"]) == (2, 2)
    assert "train_batch_size" not in config  # DeepSpeed derives it: 2 x 2 x 2 processes
    assert config["gradient_clipping"] == 1.0
    assert config["bf16"]["enabled"] is False and config["fp16"]["enabled"] is False
    zero = config["zero_optimization"]
    assert (zero["reduce_bucket_size"], zero["stage3_prefetch_bucket_size"],
            zero["stage3_param_persistence_threshold"]) == (128 * 128, int(0.9 * 128 * 128), 1280)
    # prism's own AdamW runs inside the engine, also with offloaded optimizer states
    assert config["zero_allow_untested_optimizer"] is True and config["zero_force_ds_cpu_optimizer"] is False
    unclipped = task_config(preset_config("zero2"), **{**GEOMETRY, "max_grad_norm": None, "precision": "bf16"})
    assert unclipped["gradient_clipping"] == 0.0 and unclipped["bf16"]["enabled"] is True


def test_explicit_values_that_agree_with_prism_are_kept():
    mine = {"zero_optimization": {"stage": 2, "reduce_bucket_size": 1000}, "train_micro_batch_size_per_gpu": 2,
            "gradient_accumulation_steps": 2, "train_batch_size": 8, "gradient_clipping": 1,
            "bf16": {"enabled": False}}
    config = task_config(mine, **GEOMETRY)
    assert config["train_batch_size"] == 8 and config["zero_optimization"]["reduce_bucket_size"] == 1000


@pytest.mark.parametrize("key, value, message", [
    ("train_micro_batch_size_per_gpu", 4, "[train] gives 2 samples per process"),
    ("gradient_accumulation_steps", 1, "x 2 accumulation steps"),
    ("train_batch_size", 16, "global batch 8"),
    ("gradient_clipping", 0.5, "[train] max_grad_norm = 1.0"),
    ("bf16", {"enabled": True}, "[backbone] train_precision gives 'no'"),
])
def test_explicit_values_that_contradict_prism_are_config_errors(key, value, message):
    config = {**preset_config("zero2"), key: value}
    with pytest.raises(ConfigError) as error:
        task_config(config, **GEOMETRY)
    assert str(error.value).startswith("[distributed] deepspeed_config: ")
    assert message in str(error.value)
    assert 'to "auto"' in error.value.hint


def test_an_auto_value_prism_cannot_fill_is_named():
    config = preset_config("zero2")
    config["zero_optimization"]["allgather_bucket_size"] = "auto"
    with pytest.raises(ConfigError, match=r"cannot fill zero_optimization\.allgather_bucket_size"):
        task_config(config, **GEOMETRY)


# -- the launcher -----------------------------------------------------------------------------------
def test_deepspeed_always_runs_under_torchrun_and_is_checked_before_it_starts(tmp_path):
    from prism.engine.launch import launch_command, should_relaunch

    assert should_relaunch(_ds(), env={})  # even one process: DeepSpeed needs torchrun's environment
    assert not should_relaunch(_ds(), env={"LOCAL_RANK": "0"})
    assert not should_relaunch(DistributedConfig(), env={})
    with pytest.raises(ConfigError, match="unknown preset 'zero4'"):
        launch_command(_ds(nproc=2, deepspeed_config="zero4"), ["train"], tmp_path, env={})


def test_prism_train_reports_a_bad_deepspeed_config_without_starting_processes(project):
    from tests.conftest import run_cli

    result = run_cli(["train", "--nproc", "2", "--set", "distributed.backend=deepspeed",
                      "--set", "distributed.deepspeed_config=ds/none.json"], cwd=project)
    assert result.code == 2, result
    assert "[distributed] deepspeed_config = 'ds/none.json': cannot read" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (project / "outputs").exists()  # no launch.json, nothing trained


# -- step checkpoints of ZeRO optimizer partitions --------------------------------------------------
def test_step_checkpoints_keep_every_ranks_optimizer_partition(tmp_path):
    from prism.engine.step_checkpoint import FitState, load_step_checkpoint, save_step_checkpoint

    def shard(seed: int) -> dict:
        g = torch.Generator().manual_seed(seed)
        return {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(5, generator=g),
                              "exp_avg_sq": torch.rand(5, generator=g)}},
                "param_groups": [{"lr": 1e-3, "betas": [0.9, 0.999], "initial_lr": 2e-3, "params": []}]}

    engine = {"backend": "deepspeed", "zero_stage": 3, "processes": 2}
    state = FitState(step=3, steps=6, samples=24, losses=[1.0, 0.5, 0.25], trainable={"w": torch.ones(2, 3)},
                     optimizer={"zero_shards": [shard(0), shard(1)]}, scheduler={"last_epoch": 3},
                     data=(torch.zeros(4, dtype=torch.uint8), {"epoch": 0}),
                     rng=[({"torch": torch.zeros(2, dtype=torch.uint8)}, {"python": 1}),
                          ({"torch": torch.ones(2, dtype=torch.uint8)}, {"python": 2})], engine=engine)
    save_step_checkpoint(tmp_path / "Task0", state)
    loaded = load_step_checkpoint(tmp_path / "Task0")
    assert loaded.engine == engine
    assert len(loaded.optimizer["zero_shards"]) == 2
    for mine, theirs in zip(loaded.optimizer["zero_shards"], state.optimizer["zero_shards"]):
        assert mine["param_groups"] == theirs["param_groups"]
        for key, value in theirs["state"][0].items():
            assert mine["state"][0][key].equal(value), key
    # a plain (single process / DDP) checkpoint names no engine
    plain = FitState(**{**state.__dict__, "optimizer": shard(0), "engine": None})
    save_step_checkpoint(tmp_path / "Task1", plain)
    assert load_step_checkpoint(tmp_path / "Task1").engine is None
