"""`prism config show|validate` through the real CLI entry point (in-process, exit codes kept)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from pydantic import Field

from prism.methods.base import LoRAParams, Method, MethodParams
from prism.registry import Registry


class _LoRA(Method):
    Params = LoRAParams


class _EWCParams(MethodParams):
    ewc_lambda: float = Field(1000.0, gt=0)


class _EWC(Method):
    Params = _EWCParams
    config_defaults = {"train": {"lr": 1e-3}}


@pytest.fixture
def methods(monkeypatch):
    import prism.plugins

    registry: Registry = Registry("method")
    registry.add("ft_lora", _LoRA, provider="test")
    registry.add("ewc", _EWC, provider="test")
    registry.add("broken", "prism_no_such_module_for_tests:Nope", provider="test")
    real = prism.plugins.registry
    monkeypatch.setattr(prism.plugins, "registry",
                        lambda kind, project_dir=None: registry if kind == "method" else real(kind, project_dir))
    return registry


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "proj"
    folder.mkdir()
    monkeypatch.chdir(folder)
    monkeypatch.setenv("COLUMNS", "200")
    for name in ("PRISM_CONFIG", "PRISM_METHOD", "PRISM_SEED"):
        monkeypatch.delenv(name, raising=False)
    return folder


def _write(folder: Path, text: str) -> Path:
    path = folder / "prism.toml"
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def run(args: list[str], capsys) -> tuple[int, str, str]:
    from prism.cli.app import main

    with pytest.raises(SystemExit) as info:
        main(args)
    out, err = capsys.readouterr()
    code = info.value.code
    return (code if isinstance(code, int) else 0 if code is None else 1), out, err


def test_show_json(methods, project, capsys):
    path = _write(project, '[method]\nid = "ewc"\n\n[train]\nepochs = 2\n')
    code, out, err = run(["config", "show", "--json", "--set", "infer.batch_size=8", "--method", "ewc"], capsys)
    assert code == 0, str(err)
    data = json.loads(out)
    assert set(data) == {"config", "sources", "config_path", "hash"}
    assert data["config_path"] == str(path.resolve())
    assert data["config"]["train"]["lr"] == 1e-3 and data["config"]["method"]["ewc"] == {"ewc_lambda": 1000.0}
    assert data["sources"]["train.lr"] == "method default (ewc)"
    assert data["sources"]["train.epochs"] == "prism.toml:5"
    assert data["sources"]["infer.batch_size"] == "--set"
    assert data["sources"]["method.id"] == "--method"
    assert len(data["hash"]) == 64


def test_show_table_goes_to_stderr(methods, project, capsys):
    _write(project, "[train]\nlr = 1e-3\n")
    code, out, err = run(["config", "show"], capsys)
    assert code == 0 and out == ""
    row = next(line for line in err.splitlines() if "train.lr" in line)
    assert "0.001" in row and "prism.toml:2" in row
    assert "method.ft_lora.r" in err and "hash:" in err


def test_show_without_a_config_file(methods, project, capsys):
    code, out, err = run(["config", "show", "--json"], capsys)
    assert code == 0 and json.loads(out)["config_path"] is None


def test_show_with_a_broken_method_plugin_still_shows(methods, project, capsys):
    _write(project, '[method]\nid = "broken"\n')
    code, out, err = run(["config", "show", "--json"], capsys)
    assert code == 0
    assert "warning:" in err and "not validated" in err
    assert json.loads(out)["config"]["method"]["id"] == "broken"


def test_validate_ok(methods, project, capsys):
    path = _write(project, "[train]\nlr = 1e-3\n")
    code, out, err = run(["config", "validate"], capsys)
    assert code == 0 and f"ok: {path.resolve()}" in err


def test_validate_json(methods, project, capsys):
    code, out, err = run(["config", "validate", "--json"], capsys)
    assert code == 0 and json.loads(out)["ok"] is True


def test_validate_bad_set_value_exits_2_naming_the_key(methods, project, capsys):
    code, out, err = run(["config", "validate", "--set", "train.lr=abc"], capsys)
    assert code == 2
    assert "train.lr" in err and "valid number" in err
    assert "Traceback" not in err


def test_validate_bad_set_form(methods, project, capsys):
    code, out, err = run(["config", "validate", "--set", "train.lr"], capsys)
    assert code == 2 and "expected KEY=VALUE" in err


def test_validate_unknown_key_suggests(methods, project, capsys):
    _write(project, "[train]\nlrr = 1\n")
    code, out, err = run(["config", "validate"], capsys)
    assert code == 2 and "prism.toml:2" in err and "did you mean 'lr'" in err


def test_validate_missing_config_file(methods, project, capsys):
    code, out, err = run(["config", "validate", "-c", "missing.toml"], capsys)
    assert code == 2 and "not found" in err and "missing.toml" in err


def test_validate_broken_method_is_a_runtime_error(methods, project, capsys):
    _write(project, '[method]\nid = "broken"\n')
    code, out, err = run(["config", "validate"], capsys)
    assert code == 1 and "broken" in err


def test_config_commands_do_not_import_torch(tmp_path):
    probe = textwrap.dedent("""
        import sys
        from prism.cli.app import main
        try:
            main(sys.argv[1:])
        except SystemExit:
            pass
        import prism.config, prism.cli.config_cmd, prism.cli.init_cmd
        heavy = sorted(m for m in ("torch", "transformers", "peft") if m in sys.modules)
        sys.stderr.write("HEAVY=" + ",".join(heavy) + "\\n")
    """)
    import prism

    src = str(Path(prism.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
    for args in (["config", "--help"], ["init", str(tmp_path / "p")]):
        proc = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True,
                              cwd=tmp_path, env=env, timeout=120)
        assert proc.stderr.splitlines()[-1] == "HEAVY=", (args, proc.stderr)


# -- `prism config validate` reports what `prism train` rejects, every problem at once -----------
REPO = Path(__file__).resolve().parents[2]


def _missing_tracker() -> str | None:
    import importlib.util

    return next((name for name in ("wandb", "mlflow", "aim", "clearml", "dvclive", "comet_ml", "tensorboard")
                 if importlib.util.find_spec(name) is None), None)


@pytest.fixture
def real_project(tmp_path, monkeypatch, synthetic_data) -> Path:
    """The repository's prism.toml with the real registries and the generated data."""
    folder = tmp_path / "real"
    folder.mkdir()
    (folder / "prism.toml").write_text((REPO / "prism.toml").read_text(encoding="utf-8"), encoding="utf-8")
    (folder / "data").mkdir()
    (folder / "data" / "synthetic").symlink_to(synthetic_data, target_is_directory=True)
    monkeypatch.chdir(folder)
    monkeypatch.setenv("COLUMNS", "200")
    for name in ("PRISM_CONFIG", "PRISM_METHOD", "PRISM_SEED", "PRISM_TASKS", "PRISM_MODEL"):
        monkeypatch.delenv(name, raising=False)
    return folder


@pytest.fixture
def no_training(monkeypatch):
    """`prism train` must reject the input before it trains or loads a model."""
    import prism.engine.loop
    import prism.engine.session

    def refuse(*args, **kwargs):
        pytest.fail("prism train went past validation")

    monkeypatch.setattr(prism.engine.loop, "train", refuse)
    monkeypatch.setattr(prism.engine.session, "load_backbone", refuse)


#: (id, --set/flag arguments, (line in prism.toml, its replacement) or None, fragments stderr must contain)
BAD_INPUTS = [
    ("backbone-id", ["--set", "backbone.id=lava"], None, ["[backbone] id", "did you mean 'llava'"]),
    ("backbone-id-number", None, ('id = "llava"', "id = 7"), ["[backbone] id", "unknown backbone '7'"]),
    ("benchmark-id", ["--set", "benchmark.id=ucti"], None, ["[benchmark] id", "did you mean 'ucit'"]),
    ("method-id", ["--set", "method.id=ft_lor"], None, ["[method] id", "did you mean 'ft_lora'"]),
    ("method-id-number-set", ["--set", "method.id=3"], None, ["--set method.id=3", "[method] id",
                                                              "unknown method '3'"]),
    ("method-id-number-file", None, ('id = "ft_lora"', "id = 3"), ["[method] id", "unknown method '3'"]),
    ("task-name", ["--set", "benchmark.tasks='colour,shap'"], None, ["[benchmark] tasks", "did you mean 'shape_mc'"]),
    ("task-index", ["--set", "benchmark.tasks=[0, 7]"], None, ["[benchmark] tasks", "index 7 is out of range"]),
    ("tasks-empty", ["--set", "benchmark.tasks=''"], None, ["[benchmark] tasks", "empty"]),
    ("tracker-unknown", ["--set", "train.report_to=['tensorbored']"], None,
     ["[train] report_to", "did you mean 'tensorboard'"]),
    ("tracker-missing", ["--set", f"train.report_to=['{_missing_tracker()}']"], None,
     ["[train] report_to", "needs the"]),
    ("train-override-task", ["--set", "train.overrides={colr={lr=1e-3}}"], None,
     ['[train.overrides."colr"]', "did you mean 'colour'"]),
    ("train-override-task-file", None, ("eval_after_each_task = true",
                                        'eval_after_each_task = true\noverrides = { shape = { max_steps = 5 } }'),
     ['[train.overrides."shape"]', "has no task 'shape'"]),
    ("target-modules", ["--set", "method.ft_lora.target_modules='(q_proj'"], None,
     ["[method.ft_lora] target_modules", "regular expression"]),
    ("target-modules-file", None, ('target_modules = "attn_and_ffn"', 'target_modules = "[q_proj"'),
     ["[method.ft_lora] target_modules"]),
    ("lr-inf", ["--set", "train.lr=inf"], None, ["[train] lr", "finite"]),
    ("lr-nan-file", None, ("lr = 1e-3", "lr = nan"), ["[train] lr", "finite"]),
    ("method-param-inf", ["--set", "method.ft_lora.alpha=-inf"], None, ["[method.ft_lora] alpha", "finite"]),
    ("int-beyond-int64", ["--set", "project.seed=9223372036854775808"], None, ["[project] seed", "64-bit"]),
    ("int-beyond-int64-file", None, ("max_steps = 300", "max_steps = 99999999999999999999"),
     ["[train] max_steps", "64-bit"]),
    ("synthetic-overrides", ["--set", "benchmark.overrides={colour={max_new_tokens=4}}"], None,
     ["[benchmark] overrides", "synthetic"]),
    ("model-folder", ["--set", "backbone.model='./no-such-model'"], None, ["[backbone] model = './no-such-model'"]),
    ("routing-tower", ["--set", "backbone.routing_tower='./no-such-clip'"], None,
     ["[backbone] routing_tower = './no-such-clip'"]),
    ("builtin-model", ["--set", "backbone.model='builtin:tiny-nothing'"], None, ["no such builtin model"]),
    ("data-root", ["--set", "benchmark.id=ucit", "--set", "benchmark.root='no-such-data'"], None,
     ["[benchmark] root", "no-such-data not found"]),
]


def _bad_input(project: Path, args, edit) -> list[str]:
    if edit is not None:
        toml = project / "prism.toml"
        text = toml.read_text(encoding="utf-8")
        old, new = edit
        assert f"\n{old}\n" in text, old
        toml.write_text(text.replace(f"\n{old}\n", f"\n{new}\n", 1), encoding="utf-8")
        return []
    return list(args)


@pytest.mark.parametrize("command", [["config", "validate"], ["train"]], ids=["validate", "train"])
@pytest.mark.parametrize("case, args, edit, fragments", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_exits_2_naming_the_key(real_project, no_training, capsys, command, case, args, edit, fragments):
    if case == "tracker-missing" and _missing_tracker() is None:
        pytest.skip("every tracker is installed here")
    extra = _bad_input(real_project, args, edit)
    code, out, err = run([*command, *extra], capsys)
    err = " ".join(err.split())
    assert code == 2, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    source = "--set" if args else "prism.toml:"
    assert source in err and "Traceback" not in err


@pytest.mark.parametrize("flags, fragments", [
    (["--tasks", ""], ["--tasks", "[benchmark] tasks", "empty"]),
    (["--tasks", "0,9"], ["--tasks", "index 9 is out of range"]),
    (["--tasks", "colr"], ["--tasks", "did you mean 'colour'"]),
    (["--model", "./no-such-model"], ["--model", "[backbone] model = './no-such-model'"]),
    (["--backbone", "lava"], ["--backbone", "[backbone] id"]),
    (["--method", "3"], ["--method", "[method] id", "unknown method '3'"]),
], ids=["tasks-empty", "task-index", "task-name", "model", "backbone", "method-number"])
def test_train_flags_are_checked_before_training(real_project, no_training, capsys, flags, fragments):
    code, out, err = run(["train", *flags], capsys)
    err = " ".join(err.split())
    assert code == 2, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


def test_every_problem_is_reported_at_once(real_project, no_training, capsys):
    sets = ["backbone.id=lava", "benchmark.tasks='colour,nope'", "train.report_to=['tensorbored']",
            "method.ft_lora.target_modules='('", "infer.temperature=nan", "train.overrides={shape={lr=1e-3}}",
            "backbone.model='./no-such-model'"]
    for command in (["config", "validate"], ["train"]):
        code, out, err = run([*command, *[arg for s in sets for arg in ("--set", s)]], capsys)
        err = " ".join(err.split())
        assert code == 2 and "(7 problems)" in err, err
        for key in ("[backbone] id", "[benchmark] tasks", "[train] report_to", "[method.ft_lora] target_modules",
                    "[infer] temperature", '[train.overrides."shape"]', "[backbone] model"):
            assert key in err, (key, err)


def test_schema_errors_and_run_checks_are_reported_together(real_project, capsys):
    code, out, err = run(["config", "validate", "--set", "train.lrr=1", "--set", "backbone.id=lava",
                          "--set", "benchmark.tasks=9"], capsys)
    err = " ".join(err.split())
    assert code == 2 and "(3 problems)" in err, err
    assert "did you mean 'lr'" in err and "[backbone] id" in err and "[benchmark] tasks" in err


def test_validate_does_not_download_a_hub_model(real_project, capsys):
    code, out, err = run(["config", "validate", "--set", "backbone.model='someone/llava-7b'"], capsys)
    assert code == 0, str(err)
    assert "not checked: [backbone] model = 'someone/llava-7b': a hub id" in " ".join(err.split())
    code, out, err = run(["config", "validate", "--json", "--set", "backbone.routing_tower='openai/clip'"], capsys)
    assert code == 0 and json.loads(out)["not_checked"] == [
        "[backbone] routing_tower = 'openai/clip': a hub id, not looked up (prism train fetches it)"]


def test_validate_accepts_local_folders_relative_to_the_project(real_project, capsys):
    shutil.copytree(REPO / "src" / "prism" / "assets" / "tiny-llava", real_project / "models" / "tiny")
    (real_project / "models" / "empty").mkdir()
    code, out, err = run(["config", "validate", "--set", "backbone.model='models/tiny'",
                          "--set", "backbone.routing_tower='builtin:tiny-clip'"], capsys)
    assert code == 0, str(err)
    code, out, err = run(["config", "validate", "--set", "backbone.model='models/empty'"], capsys)
    assert code == 2 and "has no config.json" in " ".join(err.split())


def test_validate_with_the_real_registries_imports_no_torch(real_project):
    probe = textwrap.dedent("""
        import sys
        from prism.cli.app import main
        try:
            main(["config", "validate"])
        except SystemExit as exit:
            code = exit.code
        heavy = sorted(m for m in ("torch", "transformers", "peft") if m in sys.modules)
        sys.stderr.write(f"CODE={code} HEAVY=" + ",".join(heavy) + "\\n")
    """)
    import prism

    src = str(Path(prism.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=real_project,
                          env=env, timeout=120)
    assert proc.stderr.splitlines()[-1] == "CODE=0 HEAVY=", proc.stderr
