"""The run checks (prism.config.run_checks) and the loader's number checks, as library calls."""

from __future__ import annotations

from pathlib import Path

import pytest
from config_helpers import write_toml

from prism.config import load_config
from prism.errors import ConfigError


def _error(**kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(**kwargs)
    assert info.value.exit_code == 2
    return info.value.message


# -- numbers no setting may hold -------------------------------------------------------------
def test_infinite_and_nan_floats_are_rejected_with_key_and_line(methods, project):
    write_toml(project, """
        [train]
        lr = inf
        warmup_ratio = nan

        [method.ft_lora]
        alpha = -inf
    """)
    message = _error(cwd=project, env={})
    assert "(3 problems)" in message
    assert "prism.toml:2: [train] lr: must be a finite number (got inf)" in message
    assert "prism.toml:3: [train] warmup_ratio: must be a finite number (got nan)" in message
    assert "prism.toml:6: [method.ft_lora] alpha: must be a finite number (got -inf)" in message


def test_integers_beyond_64_bits_are_rejected_wherever_they_are(methods, project):
    write_toml(project, "[project]\nseed = 9223372036854775808\n\n[benchmark]\ntasks = [0, 99999999999999999999]\n")
    message = _error(cwd=project, env={}, sets=["train.max_steps=-9223372036854775809"])
    assert "prism.toml:2: [project] seed: integer out of range" in message
    assert "prism.toml:5: [benchmark] tasks: integer out of range" in message
    assert "--set train.max_steps=-9223372036854775809: [train] max_steps: integer out of range" in message


def test_the_largest_64_bit_integer_is_a_valid_seed(methods, project):
    resolved = load_config(cwd=project, env={}, sets=["project.seed=9223372036854775807"])
    assert resolved.config.project.seed == 2**63 - 1


# -- ids -------------------------------------------------------------------------------------
def test_a_number_as_method_id_is_an_unknown_method(methods, project):
    write_toml(project, "[method]\nid = 3\n")
    assert "prism.toml:2: [method] id: unknown method '3'" in _error(cwd=project, env={})


def test_unknown_backbone_and_benchmark_need_check_run(methods, project):
    sets = ["backbone.id=lava", "benchmark.id=7"]
    load_config(cwd=project, env={}, sets=sets)  # the schema alone knows no registry
    message = _error(cwd=project, env={}, sets=sets, check_run=True)
    assert "--set backbone.id=lava: [backbone] id: unknown backbone 'lava' (did you mean 'llava'?)" in message
    assert "--set benchmark.id=7: [benchmark] id: unknown benchmark '7'" in message


def test_tables_that_validate_are_still_checked_when_others_do_not(methods, project):
    write_toml(project, '[train]\nlrr = 1\nreport_to = ["tensorbored"]\n\n[backbone]\nid = "lava"\n')
    message = _error(cwd=project, env={}, check_run=True)
    assert "(2 problems)" in message  # [train] is invalid, so its trackers are not looked at
    assert "prism.toml:2: [train] lrr: unknown key" in message
    assert "prism.toml:6: [backbone] id: unknown backbone 'lava'" in message


# -- the run checks on a resolved config -----------------------------------------------------
def test_validate_run_names_the_source_of_each_problem(methods, project):
    from prism.config.run_checks import validate_run

    write_toml(project, """
        [train.overrides."colr"]
        lr = 1e-3

        [method.ft_lora]
        target_modules = "(q_proj"
    """)
    resolved = load_config(cwd=project, env={}, sets=["train.report_to=['tensorbored']"])
    assert resolved.where(("train", "overrides", "colr")) == "prism.toml:1"
    assert resolved.where("train.report_to") == "--set train.report_to=['tensorbored']"
    assert resolved.where("train.lr") == "default"
    with pytest.raises(ConfigError) as info:
        validate_run(resolved)
    message = info.value.message
    assert "(3 problems)" in message
    assert 'prism.toml:1: [train.overrides."colr"]: benchmark \'synthetic\' has no task \'colr\'' in message
    assert "prism.toml:5: [method.ft_lora] target_modules: '(q_proj' is neither a preset" in message
    assert "[train] report_to: unknown tracker 'tensorbored' (did you mean 'tensorboard'?)" in message


def test_hub_ids_are_listed_as_not_checked(methods, project):
    resolved = load_config(cwd=project, env={}, check_run=True,
                           sets=["backbone.model='llava-hf/llava-1.5-7b-hf'", "backbone.routing_tower='builtin:tiny-clip'"])
    assert resolved.unchecked == ["[backbone] model = 'llava-hf/llava-1.5-7b-hf': a hub id, not looked up "
                                  "(prism train fetches it)"]


def test_a_routing_tower_must_be_a_full_clip(methods, project):
    message = _error(cwd=project, env={}, check_run=True, sets=["backbone.routing_tower='builtin:tiny-llava'"])
    assert "--set backbone.routing_tower='builtin:tiny-llava': [backbone] routing_tower" in message
    assert "no such builtin CLIP model" in message


def test_a_missing_data_root_is_an_error_unless_the_benchmark_creates_its_data(methods, project):
    load_config(cwd=project, env={}, check_run=True, sets=["benchmark.root='not-yet'"])  # synthetic generates it
    message = _error(cwd=project, env={}, check_run=True, sets=["benchmark.id=coin", "benchmark.root='not-yet'"])
    assert f"[benchmark] root: data folder {project.resolve() / 'not-yet'} not found" in message


def test_published_tasks_are_checked_even_when_overrides_are_wrong(methods, project):
    (project / "ucit").mkdir()
    write_toml(project, '[benchmark]\nid = "ucit"\nroot = "ucit"\ntasks = "ImageNet-R,Flickr"\n\n'
                        '[benchmark.overrides.Nope]\nmax_new_tokens = 4\n')
    message = _error(cwd=project, env={}, check_run=True)
    assert "(2 problems)" in message
    assert "ucit has no task 'Nope'" in message
    assert "prism.toml:4: [benchmark] tasks: unknown task 'Flickr' (did you mean 'Flickr30k'?)" in message


# -- the synthetic benchmark refuses what it would ignore --------------------------------------
def test_synthetic_refuses_overrides(tmp_path):
    from prism.benchmarks.synthetic import SyntheticBenchmark
    from prism.config.schema import BenchmarkConfig

    plain = SyntheticBenchmark(BenchmarkConfig(root=str(tmp_path)), tmp_path)
    assert [s.name for s in plain.task_specs()] == ["colour", "shape_mc", "count", "position", "caption"]
    config = BenchmarkConfig(root=str(tmp_path), overrides={"colour": {"max_new_tokens": 4}})
    with pytest.raises(ConfigError, match=r"\[benchmark\] overrides: the synthetic benchmark .* 'colour'"):
        SyntheticBenchmark(config, tmp_path).task_specs()
    assert not any(Path(tmp_path).iterdir())  # nothing was generated


def test_empty_task_selection_is_not_every_task(methods, project):
    message = _error(cwd=project, env={}, flags={"benchmark.tasks": ""})
    assert "--tasks: [benchmark] tasks: empty" in message
    assert load_config(cwd=project, env={"PRISM_TASKS": ""}).config.benchmark.tasks is None  # unset, by convention


def test_tracker_check_is_shared_with_the_training_loop():
    from prism.config.run_checks import tracker_problems

    assert tracker_problems([]) == []
    assert tracker_problems(["tensorbored", "mlfow"]) == [
        "unknown tracker 'tensorbored' (did you mean 'tensorboard'?); choose from aim, clearml, comet_ml, "
        "dvclive, mlflow, tensorboard, wandb",
        "unknown tracker 'mlfow' (did you mean 'mlflow'?); choose from aim, clearml, comet_ml, dvclive, "
        "mlflow, tensorboard, wandb"]

