"""`prism init`: writes the annotated template, refuses to overwrite without --force."""

from __future__ import annotations

from pathlib import Path

import pytest

from prism.config import default_toml_text


@pytest.fixture
def cwd(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "200")
    return tmp_path


def run(args: list[str], capsys) -> tuple[int, str, str]:
    from prism.cli.app import main

    with pytest.raises(SystemExit) as info:
        main(args)
    out, err = capsys.readouterr()
    code = info.value.code
    return (code if isinstance(code, int) else 0 if code is None else 1), out, err


def test_init_writes_the_template_here(cwd, capsys):
    code, out, err = run(["init"], capsys)
    assert code == 0, str(err)
    assert (cwd / "prism.toml").read_text(encoding="utf-8") == default_toml_text()
    assert "next steps" in err and "prism train" in err and "cd " not in err
    assert out == ""
    assert sorted(p.name for p in cwd.iterdir()) == ["prism.toml"]  # no temp files left


def test_init_into_a_new_folder(cwd, capsys):
    code, out, err = run(["init", "new/project"], capsys)
    assert code == 0, str(err)
    assert (cwd / "new" / "project" / "prism.toml").read_text(encoding="utf-8") == default_toml_text()
    assert "cd new/project" in err


def test_init_refuses_to_overwrite(cwd, capsys):
    (cwd / "prism.toml").write_text("mine = 1\n")
    code, out, err = run(["init"], capsys)
    assert code == 2 and "already exists" in err and "--force" in err
    assert (cwd / "prism.toml").read_text() == "mine = 1\n"


def test_init_force_overwrites(cwd, capsys):
    (cwd / "prism.toml").write_text("mine = 1\n")
    code, out, err = run(["init", "--force"], capsys)
    assert code == 0
    assert (cwd / "prism.toml").read_text(encoding="utf-8") == default_toml_text()


def test_init_into_a_file_is_an_error(cwd, capsys):
    (cwd / "afile").write_text("x")
    code, out, err = run(["init", "afile"], capsys)
    assert code == 2 and "not a folder" in err


def test_initialised_project_validates(cwd, capsys, monkeypatch):
    import prism.plugins
    from prism.methods.base import LoRAParams, Method
    from prism.registry import Registry

    class _LoRA(Method):
        Params = LoRAParams

    registry: Registry = Registry("method")
    registry.add("ft_lora", _LoRA, provider="test")
    registry.add("ewc", _LoRA, provider="test")  # the template has a [method.ewc] table
    real = prism.plugins.registry  # the backbone and benchmark ids are checked against the real ones
    monkeypatch.setattr(prism.plugins, "registry",
                        lambda kind, project_dir=None: registry if kind == "method" else real(kind, project_dir))
    monkeypatch.delenv("PRISM_CONFIG", raising=False)
    assert run(["init"], capsys)[0] == 0
    code, out, err = run(["config", "validate"], capsys)
    assert code == 0 and f"ok: {(cwd / 'prism.toml').resolve()}" in err
