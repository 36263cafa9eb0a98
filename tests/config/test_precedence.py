"""defaults < method defaults < prism.toml < env < --set < flags, merged on "was given"."""

from __future__ import annotations

import pytest
from config_helpers import write_toml

from prism.config import ENV_ALIASES, load_config

# One key through every level: each row adds a level above the previous ones.
LEVELS = [
    ("default", {}, 2e-4, "default"),
    ("method default", {"method": "ewc"}, 1e-3, "method default (ewc)"),
    ("file", {"method": "ewc", "file": 5e-4}, 5e-4, "prism.toml:5"),
    ("env", {"method": "ewc", "file": 5e-4, "env": "6e-4"}, 6e-4, "env PRISM_TRAIN__LR"),
    ("--set", {"method": "ewc", "file": 5e-4, "env": "6e-4", "set": "7e-4"}, 7e-4, "--set"),
    ("flag", {"method": "ewc", "file": 5e-4, "env": "6e-4", "set": "7e-4", "flag": 8e-4}, 8e-4, "--lr"),
]


@pytest.mark.parametrize("level, given, value, source", LEVELS, ids=[row[0] for row in LEVELS])
def test_each_level_beats_the_ones_below(methods, project, level, given, value, source):
    method = given.get("method", "ft_lora")
    text = f'[method]\nid = "{method}"\n\n[train]\n'
    if "file" in given:
        text += f"lr = {given['file']}\n"
    write_toml(project, text)
    env = {"PRISM_TRAIN__LR": given["env"]} if "env" in given else {}
    sets = [f"train.lr={given['set']}"] if "set" in given else []
    flags = {"train.lr": given["flag"]} if "flag" in given else {}
    resolved = load_config(cwd=project, env=env, sets=sets, flags=flags)
    assert resolved.config.train.lr == value
    assert resolved.sources["train.lr"] == source


@pytest.mark.parametrize("file, env, sets, flag, expected, source", [
    ("ewc", None, None, None, "ewc", "prism.toml:2"),
    ("ewc", "ft_lora", None, None, "ft_lora", "env PRISM_METHOD"),
    ("ewc", "ft_lora", "ewc", None, "ewc", "--set"),
    ("ewc", "ft_lora", "ewc", "ft_lora", "ft_lora", "--method"),
    (None, None, None, "ewc", "ewc", "--method"),
])
def test_method_id_precedence(methods, project, file, env, sets, flag, expected, source):
    if file:
        write_toml(project, f'[method]\nid = "{file}"\n')
    resolved = load_config(cwd=project, env={"PRISM_METHOD": env} if env else {},
                           sets=[f'method.id="{sets}"'] if sets else [], flags={"method.id": flag})
    assert resolved.config.method.id == expected
    assert resolved.sources["method.id"] == source
    # the method defaults come from the method that was finally chosen
    assert resolved.config.train.lr == (1e-3 if expected == "ewc" else 2e-4)


def test_falsy_values_still_win(methods, project):
    """A higher level that gives 0, false, "" or [] overrides a truthy lower value."""
    write_toml(project, """
        [method]
        id = "ewc"

        [backbone]
        routing_tower = "clip"

        [train]
        weight_decay = 0.0
        gradient_checkpointing = true

        [plugins]
        disable = ["x"]
    """)
    resolved = load_config(
        cwd=project,
        env={"PRISM_TRAIN__GRADIENT_CHECKPOINTING": "false", "PRISM_SEED": "7"},
        sets=['backbone.routing_tower=""', "plugins.disable=[]"],
        flags={"project.seed": 0},
    )
    cfg = resolved.config
    assert cfg.train.weight_decay == 0.0 and resolved.sources["train.weight_decay"] == "prism.toml:8"
    assert cfg.train.gradient_checkpointing is False
    assert resolved.sources["train.gradient_checkpointing"] == "env PRISM_TRAIN__GRADIENT_CHECKPOINTING"
    assert cfg.backbone.routing_tower == "" and resolved.sources["backbone.routing_tower"] == "--set"
    assert cfg.plugins.disable == [] and resolved.sources["plugins.disable"] == "--set"
    assert cfg.project.seed == 0 and resolved.sources["project.seed"] == "--seed"


def test_none_flags_are_not_given(methods, project):
    write_toml(project, '[method]\nid = "ewc"\n[benchmark]\ntasks = "0-2"\n')
    resolved = load_config(cwd=project, env={}, flags={"method.id": None, "benchmark.tasks": None})
    assert resolved.config.method.id == "ewc" and resolved.config.benchmark.tasks == "0-2"
    assert resolved.sources["benchmark.tasks"] == "prism.toml:4"


def test_empty_env_variable_counts_as_unset(methods, project):
    write_toml(project, '[method]\nid = "ewc"\n')
    resolved = load_config(cwd=project, env={"PRISM_METHOD": ""})
    assert resolved.config.method.id == "ewc"


def test_later_set_beats_earlier_set(methods, project):
    resolved = load_config(cwd=project, env={}, sets=["train.lr=1e-3", "train.lr=2e-3"])
    assert resolved.config.train.lr == 2e-3


def test_method_params_precedence(methods, project):
    write_toml(project, """
        [method]
        id = "ewc"

        [method.ewc]
        ewc_lambda = 10
    """)
    resolved = load_config(cwd=project, env={"PRISM_METHOD__EWC__EWC_LAMBDA": "20"}, sets=[])
    assert resolved.method_params.ewc_lambda == 20
    assert resolved.sources["method.ewc.ewc_lambda"] == "env PRISM_METHOD__EWC__EWC_LAMBDA"
    assert resolved.method_params.fisher_samples == 50  # config_defaults beat the Params default
    assert resolved.sources["method.ewc.fisher_samples"] == "method default (ewc)"
    resolved = load_config(cwd=project, env={}, sets=["method.ewc.fisher_samples=3"])
    assert resolved.method_params.fisher_samples == 3
    assert resolved.sources["method.ewc.fisher_samples"] == "--set"
    assert resolved.sources["method.ewc.ewc_lambda"] == "prism.toml:5"


def test_file_beats_method_defaults_for_method_params(methods, project):
    write_toml(project, '[method]\nid = "ewc"\n\n[method.ewc]\nfisher_samples = 9\n')
    resolved = load_config(cwd=project, env={})
    assert resolved.method_params.fisher_samples == 9
    assert resolved.sources["method.ewc.fisher_samples"] == "prism.toml:5"


def test_method_defaults_keep_their_hands_off_the_method_choice(methods, project):
    write_toml(project, '[method]\nid = "ewc"\n')
    resolved = load_config(cwd=project, env={})
    assert resolved.config.method.id == "ewc"  # FakeEWC's config_defaults try method.id = "ignored"
    assert resolved.config.train.weight_decay == 0.5


@pytest.mark.parametrize("name, raw, dotted, value", [
    ("PRISM_BACKBONE", "internvl", "backbone.id", "internvl"),
    ("PRISM_MODEL", "/models/llava-7b", "backbone.model", "/models/llava-7b"),
    ("PRISM_METHOD", "ewc", "method.id", "ewc"),
    ("PRISM_BENCHMARK", "ucit", "benchmark.id", "ucit"),
    ("PRISM_DATA_ROOT", "/data/ucit", "benchmark.root", "/data/ucit"),
    ("PRISM_OUTPUT_DIR", "runs", "project.output_dir", "runs"),
    ("PRISM_SEED", "3", "project.seed", 3),
    ("PRISM_TASKS", "0,2,3", "benchmark.tasks", "0,2,3"),
    ("PRISM_TASKS", "[0, 2]", "benchmark.tasks", [0, 2]),
    ("PRISM_TASKS", "3", "benchmark.tasks", [3]),
])
def test_env_aliases(methods, project, name, raw, dotted, value):
    assert name in ENV_ALIASES
    resolved = load_config(cwd=project, env={name: raw})
    table, key = dotted.split(".")
    assert resolved.to_dict()[table][key] == value
    assert resolved.sources[dotted] == f"env {name}"


def test_generic_env_beats_alias(methods, project):
    resolved = load_config(cwd=project, env={"PRISM_SEED": "1", "PRISM_PROJECT__SEED": "2"})
    assert resolved.config.project.seed == 2


@pytest.mark.parametrize("raw, expected", [
    ("1e-4", 1e-4), ("3", 3.0), ('"0.5"', 0.5),
])
def test_values_are_parsed_as_toml(methods, project, raw, expected):
    resolved = load_config(cwd=project, env={}, sets=[f"train.lr={raw}"])
    assert resolved.config.train.lr == expected


def test_inline_table_in_set(methods, project):
    resolved = load_config(cwd=project, env={}, sets=['train={lr = 1e-3, epochs = 2}'])
    assert resolved.config.train.lr == 1e-3 and resolved.config.train.epochs == 2.0
    assert resolved.sources["train.lr"] == "--set" and resolved.sources["train.log_every"] == "default"
