"""Loading: discovery, errors naming their source, resolved output, hashing and saving."""

from __future__ import annotations

import tomllib

import pytest
from config_helpers import write_toml

from prism.config import RESOLVED_FILE_NAME, ResolvedConfig, discover_config, load_config
from prism.errors import ConfigError, PluginError


def _error(**kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(**kwargs)
    assert info.value.exit_code == 2
    return info.value.message


# -- discovery ---------------------------------------------------------------------------
def test_no_file_means_builtin_defaults(methods, project):
    resolved = load_config(cwd=project, env={})
    assert resolved.config_path is None
    assert resolved.project_dir == project.resolve()
    assert resolved.output_dir == project.resolve() / "outputs"
    assert resolved.config.method.id == "ft_lora"
    assert resolved.method_params.r == 8
    assert set(resolved.sources.values()) == {"default"}


def test_discovery_walks_up(methods, project):
    path = write_toml(project, "[train]\nlr = 1e-3\n")
    deep = project / "a" / "b"
    deep.mkdir(parents=True)
    resolved = load_config(cwd=deep, env={})
    assert resolved.config_path == path.resolve()
    assert resolved.project_dir == project.resolve()
    assert resolved.output_dir == project.resolve() / "outputs"
    assert resolved.data_root == project.resolve() / "data" / "synthetic"
    assert resolved.config.train.lr == 1e-3
    assert resolved.sources["train.lr"] == "prism.toml:2"


def test_prism_config_env_is_used(methods, project, tmp_path):
    other = tmp_path / "elsewhere"
    other.mkdir()
    write_toml(project, "[train]\nlr = 1e-3\n")  # nearer, but PRISM_CONFIG wins
    chosen = write_toml(other, "[train]\nlr = 5e-4\n", name="exp.toml")
    resolved = load_config(cwd=project, env={"PRISM_CONFIG": str(chosen)})
    assert resolved.config_path == chosen.resolve() and resolved.config.train.lr == 5e-4
    assert resolved.sources["train.lr"] == "exp.toml:2"
    assert resolved.project_dir == other.resolve()
    relative = load_config(cwd=tmp_path, env={"PRISM_CONFIG": "elsewhere/exp.toml"})
    assert relative.config_path == chosen.resolve()


def test_explicit_path_beats_prism_config(methods, project, tmp_path):
    explicit = write_toml(project, "[train]\nlr = 3e-3\n")
    other = write_toml(tmp_path, "[train]\nlr = 5e-4\n", name="other.toml")
    resolved = load_config(explicit, cwd=tmp_path, env={"PRISM_CONFIG": str(other)})
    assert resolved.config.train.lr == 3e-3
    assert load_config(project, cwd=tmp_path, env={}).config_path == explicit.resolve()  # a folder


def test_missing_explicit_file(methods, project):
    message = _error(config_path=project / "nope.toml", cwd=project, env={})
    assert "not found" in message and "nope.toml" in message
    message = _error(cwd=project, env={"PRISM_CONFIG": str(project / "gone.toml")})
    assert "PRISM_CONFIG" in message and "gone.toml" in message
    assert discover_config(cwd=project, env={}) is None


def test_toml_syntax_error_names_file_and_line(methods, project):
    path = write_toml(project, "[train]\nlr = 1e-3\nepochs = = 2\n")
    message = _error(config_path=path, env={})
    assert f"{path}:3" in message and "invalid TOML" in message


# -- one error listing every problem with its source ---------------------------------------
def test_unknown_key_with_line_and_suggestion(methods, project):
    write_toml(project, """
        [project]
        name = "x"

        [train]
        lr = 1e-3
        warmup_rati = 0.1
    """)
    message = _error(cwd=project, env={})
    assert "prism.toml:6: [train] warmup_rati: unknown key (did you mean 'warmup_ratio'?)" in message


def test_unknown_table_with_suggestion(methods, project):
    write_toml(project, "[trian]\nlr = 1\n")
    message = _error(cwd=project, env={})
    assert "prism.toml:1: [trian]: unknown table (did you mean 'train'?)" in message


def test_unknown_method_table(methods, project):
    write_toml(project, "[method]\nid = \"ft_lora\"\n\n[method.ewcc]\newc_lambda = 5\n")
    message = _error(cwd=project, env={})
    assert "prism.toml:4: [method.ewcc]: unknown method table (did you mean 'ewc'?)" in message


def test_unknown_method_id(methods, project):
    message = _error(cwd=project, env={}, flags={"method.id": "ewcc"})
    assert "--method: [method] id: unknown method 'ewcc' (did you mean 'ewc'?)" in message


def test_bad_method_param(methods, project):
    write_toml(project, """
        [method.ft_lora]
        r = 0
        alph = 3
    """)
    message = _error(cwd=project, env={})
    assert "prism.toml:2: [method.ft_lora] r: Input should be greater than or equal to 1 (got 0)" in message
    assert "prism.toml:3: [method.ft_lora] alph: unknown key (did you mean 'alpha'?)" in message
    assert "(2 problems)" in message


def test_method_key_that_is_not_a_table(methods, project):
    write_toml(project, "[method]\nlr = 3\n")
    message = _error(cwd=project, env={})
    assert "prism.toml:2: [method] lr: expected a table [method.lr]" in message


def test_all_problems_in_one_error(methods, project):
    write_toml(project, "[train]\nlrr = 1\n")
    message = _error(cwd=project, env={"PRISM_SEED": "abc"},
                     sets=["infer.num_beams=0", "nonsense", "method.ft_lora.dropout=2"])
    lines = [line for line in message.splitlines() if line.startswith("  - ")]
    assert len(lines) == 5, message
    assert any(line.startswith("  - --set nonsense: expected KEY=VALUE") for line in lines)
    assert any("env PRISM_SEED: [project] seed:" in line for line in lines)
    assert any("prism.toml:2: [train] lrr: unknown key (did you mean 'lr'?)" in line for line in lines)
    assert any("--set infer.num_beams=0: [infer] num_beams:" in line for line in lines)
    assert any("--set method.ft_lora.dropout=2: [method.ft_lora] dropout:" in line for line in lines)


def test_set_with_a_bad_value_names_the_key(methods, project):
    message = _error(cwd=project, env={}, sets=["train.lr=abc"])
    assert "--set train.lr=abc: [train] lr:" in message and "'abc'" in message


@pytest.mark.parametrize("item", ["train.lr", "=3", "train..lr=3", ".lr=1"])
def test_set_with_a_bad_form(methods, project, item):
    message = _error(cwd=project, env={}, sets=[item])
    assert f"--set {item}: expected KEY=VALUE" in message


def test_generic_env_with_a_bad_form(methods, project):
    message = _error(cwd=project, env={"PRISM_TRAIN__": "1"})
    assert "env PRISM_TRAIN__: expected PRISM_<TABLE>__<KEY>" in message


def test_env_unknown_table(methods, project):
    message = _error(cwd=project, env={"PRISM_TRIAN__LR": "1e-3"})
    assert "env PRISM_TRIAN__LR: [trian]: unknown table (did you mean 'train'?)" in message


def test_reserved_and_foreign_env_names_are_not_config(methods, project):
    env = {"PRISM_DEBUG": "1", "PRISM_STRICT_PLUGINS": "1", "PRISM_DISABLE_PLUGIN_AUTOLOAD": "1",
           "PRISM_DISABLED_PLUGINS": "a,b", "PRISM_LOAD_PLUGINS": "x", "PRISM_TRACE_PLUGINS": "1",
           "PRISM_CACHE_DIR": "/tmp/x"}
    resolved = load_config(cwd=project, env=env)
    assert set(resolved.sources.values()) == {"default"}


# -- method plugins that cannot be loaded ------------------------------------------------------
def test_broken_method_plugin(methods, project):
    write_toml(project, "[method]\nid = \"broken\"\n\n[method.broken]\nanything = 1\n\n[method.nope]\nx = 1\n")
    with pytest.raises(PluginError):
        load_config(cwd=project, env={})
    resolved = load_config(cwd=project, env={}, validate_method=False)
    assert resolved.method_params is None and resolved.method_class is None
    assert resolved.config.method.tables == {"broken": {"anything": 1}, "nope": {"x": 1}}
    assert resolved.sources["method.broken.anything"] == "prism.toml:5"


def test_validate_method_false_still_checks_the_core(methods, project):
    write_toml(project, "[train]\nlr = -1\n")
    with pytest.raises(ConfigError):
        load_config(cwd=project, env={}, validate_method=False)


def test_real_plugin_manager_registry(project, monkeypatch):
    """Phase two through a real PluginManager with an extra plugin."""
    import prism.plugins
    from config_helpers import FakeEWC

    from prism import hookimpl

    class ExtraPlugin:
        @hookimpl
        def register_methods(self, register):
            register("ewc_test", FakeEWC, "fake ewc")

    manager = prism.plugins.PluginManager(project, autoload=False, extra_plugins=[("extra", ExtraPlugin())])
    monkeypatch.setattr(prism.plugins, "get_manager", lambda project_dir=None: manager)
    write_toml(project, "[method]\nid = \"ewc_test\"\n\n[method.ewc_test]\newc_lambda = 7\n")
    resolved = load_config(cwd=project, env={})
    assert resolved.method_params.ewc_lambda == 7 and resolved.method_params.fisher_samples == 200
    assert resolved.config.train.lr == 1e-3  # the class's config_defaults
    write_toml(project, "[method]\nid = \"ewc_test\"\n\n[method.ewc_tset]\newc_lambda = 7\n")
    assert "did you mean 'ewc_test'" in _error(cwd=project, env={})


# -- the resolved config -------------------------------------------------------------------
TRICKY = """
    [project]
    name = "quote \\" backslash \\\\ tab \\t ünïcode"
    output_dir = "runs/a b"

    [benchmark]
    tasks = [0, "shape", "2-3"]
    max_train_samples = 20

    [method]
    id = "ewc"

    [method.ewc]
    ewc_lambda = 1e-7

    [train]
    max_steps = 5
    weight_decay = 0.0
    max_grad_norm = 0.5

    [plugins]
    disable = ["a", "b.c"]
"""


def test_sources_cover_every_leaf(methods, project):
    write_toml(project, TRICKY)
    resolved = load_config(cwd=project, env={})

    def leaves(data, prefix=""):
        for key, value in data.items():
            if isinstance(value, dict):
                yield from leaves(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}"

    assert set(resolved.sources) == set(leaves(resolved.to_dict()))
    assert resolved.sources["method.ewc.ewc_lambda"] == "prism.toml:13"
    assert resolved.sources["method.ewc.fisher_samples"] == "method default (ewc)"
    assert resolved.sources["train.max_steps"] == "prism.toml:16"
    assert resolved.sources["infer.batch_size"] == "default"


def test_to_toml_round_trip(methods, project, tmp_path):
    write_toml(project, TRICKY)
    first = load_config(cwd=project, env={}, sets=["backbone.routing_tower=\"clip\""])
    text = first.to_toml()
    tomllib.loads(text)  # valid TOML
    assert "[method.ewc]" in text and first.hash() in text
    again_dir = tmp_path / "again"
    again_dir.mkdir()
    copy = again_dir / "prism.toml"
    copy.write_text(text, encoding="utf-8")
    second = load_config(copy, env={})
    assert second.to_dict() == first.to_dict()
    assert second.hash() == first.hash()
    assert second.to_toml().splitlines()[2:] == text.splitlines()[2:]


def test_only_the_chosen_method_table_is_kept(methods, project):
    write_toml(project, "[method]\nid = \"ft_lora\"\n\n[method.ewc]\newc_lambda = 3\n")
    resolved = load_config(cwd=project, env={})
    assert list(resolved.to_dict()["method"]) == ["id", "ft_lora"]
    assert resolved.to_dict()["method"]["ft_lora"] == {"r": 8, "alpha": 16.0, "dropout": 0.05,
                                                      "target_modules": "attn_and_ffn"}


def test_hash_is_stable(methods, project):
    write_toml(project, TRICKY)
    assert load_config(cwd=project, env={}).hash() == load_config(cwd=project, env={}).hash()
    # the same values written differently hash the same
    plain = load_config(cwd=project, env={}, sets=["train.lr=0.001"])
    spelled = load_config(cwd=project, env={}, sets=["train.lr=1e-3"])
    assert plain.hash() == spelled.hash()


# which tasks run is not part of the fingerprint: `--tasks 0-5` continues the checkpoints of `--tasks 0-2`
@pytest.mark.parametrize("override", ["infer.batch_size=7", "train.log_every=3", "project.name=\"other\"",
                                      "project.output_dir=\"elsewhere\"", "benchmark.root=\"/data/x\"",
                                      "benchmark.tasks=\"0-2\""])
def test_hash_ignores_what_does_not_change_results(methods, project, override):
    base = load_config(cwd=project, env={})
    assert load_config(cwd=project, env={}, sets=[override]).hash() == base.hash()


@pytest.mark.parametrize("override", ["train.lr=1e-3", "method.ft_lora.r=4", "method.id=\"ewc\"",
                                      "project.seed=1", "infer.num_beams=2",
                                      "backbone.model=\"x\""])
def test_hash_changes_with_what_changes_results(methods, project, override):
    base = load_config(cwd=project, env={})
    assert load_config(cwd=project, env={}, sets=[override]).hash() != base.hash()


def test_save_is_atomic_and_loadable(methods, project, tmp_path):
    resolved = load_config(cwd=project, env={}, sets=["train.lr=5e-4"])
    folder = tmp_path / "run" / "results"
    path = resolved.save(folder)
    assert path == folder / RESOLVED_FILE_NAME
    assert sorted(p.name for p in folder.iterdir()) == [RESOLVED_FILE_NAME]
    reloaded = load_config(path, env={})
    assert reloaded.config.train.lr == 5e-4 and reloaded.hash() == resolved.hash()
    resolved.save(folder)  # overwrites in place
    assert sorted(p.name for p in folder.iterdir()) == [RESOLVED_FILE_NAME]


def test_output_dir_absolute_and_relative(methods, project, tmp_path):
    write_toml(project, "[project]\noutput_dir = \"runs/x\"\n")
    assert load_config(cwd=project, env={}).output_dir == project.resolve() / "runs" / "x"
    absolute = tmp_path / "abs"
    resolved = load_config(cwd=project, env={"PRISM_OUTPUT_DIR": str(absolute)})
    assert resolved.output_dir == absolute
    assert isinstance(resolved, ResolvedConfig)


def test_none_clears_an_optional_value(methods, project):
    write_toml(project, "[train]\nmax_steps = 300\n")
    resolved = load_config(cwd=project, env={}, sets=["train.max_steps=none"])
    assert resolved.config.train.max_steps is None and resolved.sources["train.max_steps"] == "--set"


def test_task_indices(methods, project):
    resolved = load_config(cwd=project, env={"PRISM_TASKS": "1-2"})
    assert resolved.task_indices(["a", "b", "c"]) == [1, 2]


def test_table_level_check_names_the_table(methods, project):
    write_toml(project, "[train]\nglobal_batch_size = 8\nmicro_batch_size = 16\n")
    message = _error(cwd=project, env={})
    assert "[train]: micro_batch_size (16) is larger than global_batch_size (8)" in message


def test_flags_accept_paths(methods, project, tmp_path):
    resolved = load_config(cwd=project, env={}, flags={"project.output_dir": tmp_path / "out"})
    assert resolved.output_dir == tmp_path / "out" and resolved.sources["project.output_dir"] == "--output-dir"


def test_numbers_for_text_settings_become_text(methods, project):
    resolved = load_config(cwd=project, env={"PRISM_PROJECT__NAME": "2024"})
    assert resolved.config.project.name == "2024"


@pytest.mark.parametrize("item, fragment", [
    ("method=3", "[method]: expected a table"),
    ("train=1", "[train]: expected a table"),
    ("method.ft_lora=2", "[method] ft_lora: expected a table [method.ft_lora]"),
])
def test_scalars_where_tables_belong(methods, project, item, fragment):
    assert fragment in _error(cwd=project, env={}, sets=[item])
