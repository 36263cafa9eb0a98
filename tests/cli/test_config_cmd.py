"""`prism config show|validate` through the real CLI entry point (in-process, exit codes kept)."""

from __future__ import annotations

import json
import os
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
    assert code == 0, err
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
