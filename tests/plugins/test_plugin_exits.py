"""A plugin that exits (SystemExit, any BaseException) is isolated like one that raises; Ctrl-C is not.

A module-level ``argparse`` parse in a local plugins/*.py sees prism's own command line and
exits; a hook may call ``sys.exit``. Either used to take every command down, `prism plugins`
included.
"""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest
import typer

from prism.errors import PluginError
from prism.plugins import PluginManager
from tests.conftest import REPO, run_cli

ARGPARSE_AT_IMPORT = "import argparse\nargparse.ArgumentParser().parse_args()\n"
GOOD = """
    from prism import hookimpl

    @hookimpl
    def register_methods(register):
        register("good_method", "json:dumps", "a method from a plugin that works")
"""


def _plugins(project: Path, **files: str) -> Path:
    folder = project / "plugins"
    folder.mkdir(exist_ok=True)
    for stem, source in files.items():
        (folder / f"{stem}.py").write_text(textwrap.dedent(source).lstrip(), encoding="utf-8")
    return folder


def _hook(hook: str, body: str) -> str:
    """A plugin whose ``hook`` (taking ``register``) runs ``body``."""
    return f"import sys\nfrom prism import hookimpl\n\n@hookimpl\ndef {hook}(register):\n    {body}\n"


# -- at import ----------------------------------------------------------------------------------
@pytest.mark.parametrize("source, shown", [
    (ARGPARSE_AT_IMPORT, "SystemExit(2)"),
    ("import sys\nsys.exit('bye from the plugin')\n", "SystemExit('bye from the plugin')"),
    ("raise GeneratorExit\n", "GeneratorExit"),
    ("class Stop(BaseException):\n    pass\n\nraise Stop('custom stop')\n", "Stop: custom stop"),
])
def test_an_exit_at_import_is_recorded_and_the_rest_loads(tmp_path, source, shown):
    folder = _plugins(tmp_path, exits=source, good=GOOD)
    manager = PluginManager(tmp_path, autoload=False)
    info = manager.infos["local:exits"]
    assert info.status == "error" and len(info.errors) == 1
    error = info.errors[0]
    assert error.startswith(f"failed to load local:exits ({folder / 'exits.py'})") and shown in error
    assert {"ft_lora", "good_method"} <= set(manager.registry("method").ids())
    assert manager.infos["local:good"].ok


def test_argparse_usage_is_kept_out_of_the_output_and_quoted_in_the_error(tmp_path, capsys):
    _plugins(tmp_path, argy=ARGPARSE_AT_IMPORT)
    manager = PluginManager(tmp_path, autoload=False)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    assert "it printed: " in manager.infos["local:argy"].errors[0]
    assert "unrecognized arguments" in manager.infos["local:argy"].errors[0]


def test_what_a_working_plugin_prints_at_import_still_shows(tmp_path, capsys):
    _plugins(tmp_path, chatty="import sys\nprint('to stdout')\nprint('to stderr', file=sys.stderr)\n")
    assert PluginManager(tmp_path, autoload=False).infos["local:chatty"].ok
    captured = capsys.readouterr()
    assert captured.out == "to stdout\n" and captured.err == "to stderr\n"


# -- at hook call -------------------------------------------------------------------------------
@pytest.mark.parametrize("hook, kind", [("register_methods", "method"), ("register_metrics", "metric"),
                                        ("register_benchmarks", "benchmark"),
                                        ("register_backbones", "backbone")])
def test_sys_exit_in_a_registration_hook_is_recorded(tmp_path, hook, kind):
    folder = _plugins(tmp_path, quitter=_hook(hook, "sys.exit(3)"), good=GOOD)
    manager = PluginManager(tmp_path, autoload=False)
    errors = manager.infos["local:quitter"].errors
    assert errors == [f"{hook} of local:quitter ({folder / 'quitter.py'}) failed: "
                      "SystemExit(3): the plugin tried to exit the process"]
    assert len(manager.registry(kind)) > 0  # the built-ins of that kind are all there
    assert {"ft_lora", "good_method"} <= set(manager.registry("method").ids())


def test_sys_exit_in_register_commands_is_recorded_and_core_commands_stay_protected(tmp_path):
    _plugins(tmp_path, cmds="""
        import sys
        from prism import hookimpl

        @hookimpl
        def register_commands(app):
            @app.command("train")
            def train():
                "Tries to replace the core command, then exits."
            sys.exit(4)
    """)
    app = typer.Typer()

    @app.command("train")
    def core_train():
        "The core command."

    manager = PluginManager(tmp_path, autoload=False)
    manager.add_commands(app, {"train"})
    errors = manager.infos["local:cmds"].errors
    assert "register_commands of local:cmds" in errors[0] and "SystemExit(4)" in errors[0]
    assert any("shadows a core prism command" in e for e in errors)
    assert [c.callback for c in app.registered_commands] == [core_train]


# -- what is not isolated -----------------------------------------------------------------------
def test_keyboard_interrupt_gets_through_at_import_and_at_hook_call(tmp_path):
    _plugins(tmp_path, ctrl_c="raise KeyboardInterrupt\n")
    with pytest.raises(KeyboardInterrupt):
        PluginManager(tmp_path, autoload=False)
    (tmp_path / "plugins" / "ctrl_c.py").write_text(_hook("register_methods", "raise KeyboardInterrupt"))
    with pytest.raises(KeyboardInterrupt):
        PluginManager(tmp_path, autoload=False)


def test_strict_mode_turns_an_exit_into_a_plugin_error(tmp_path, monkeypatch):
    folder = _plugins(tmp_path, argy=ARGPARSE_AT_IMPORT)
    monkeypatch.setenv("PRISM_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match=r"failed to load local:argy \(.*argy\.py\): SystemExit\(2\)") as err:
        PluginManager(tmp_path, autoload=False)
    assert isinstance(err.value.__cause__, SystemExit)
    (folder / "argy.py").write_text(_hook("register_metrics", "sys.exit(5)"))
    with pytest.raises(PluginError, match=r"register_metrics of local:argy .*SystemExit\(5\)"):
        PluginManager(tmp_path, autoload=False)


# -- the CLI in a real process ------------------------------------------------------------------
@pytest.fixture
def broken_project(tmp_path) -> Path:
    shutil.copy(REPO / "prism.toml", tmp_path / "prism.toml")
    _plugins(tmp_path, argy=ARGPARSE_AT_IMPORT, quitter=_hook("register_methods", "sys.exit(0)"), good=GOOD)
    return tmp_path


def test_cli_keeps_working_with_exiting_local_plugins(broken_project):
    rows = run_cli(["plugins", "--json"], cwd=broken_project)
    assert rows.code == 0, str(rows)
    by_name = {row["name"]: row for row in json.loads(rows.stdout)}  # argparse printed nothing on stdout
    assert by_name["local:argy"]["status"] == "error"
    assert "SystemExit(2)" in by_name["local:argy"]["errors"][0]
    assert str(broken_project / "plugins" / "argy.py") in by_name["local:argy"]["errors"][0]
    assert "register_methods of local:quitter" in by_name["local:quitter"]["errors"][0]
    assert by_name["local:good"]["ok"] and by_name["local:good"]["provides"] == {"method": ["good_method"]}

    table = run_cli(["plugins"], cwd=broken_project, env={"COLUMNS": "400"})
    assert table.code == 0, str(table)
    assert "local:argy" in table.stderr and "SystemExit(2)" in table.stderr and "usage:" not in table.stderr

    methods = run_cli(["methods", "list", "--json"], cwd=broken_project)
    assert methods.code == 0, str(methods)
    assert {"ft_lora", "good_method"} <= {m["id"] for m in json.loads(methods.stdout)}


def test_cli_strict_mode_fails_with_one_message(broken_project):
    result = run_cli(["methods", "list"], cwd=broken_project, env={"PRISM_STRICT_PLUGINS": "1"})
    assert result.code == 1, result
    assert "Traceback" not in result.stderr and "usage:" not in result.stderr
    assert sum(line.startswith("error:") for line in result.stderr.splitlines()) == 1
    assert "failed to load local:argy" in result.stderr
    assert "unset PRISM_STRICT_PLUGINS" in result.stderr


# -- a registered target whose module exits when first loaded -------------------------------------
def test_a_target_module_that_exits_at_import_is_a_plugin_error_naming_entry_and_module(tmp_path, monkeypatch):
    from prism.registry import Registry

    (tmp_path / "exits_at_import.py").write_text("import sys\nsys.exit(0)\n", encoding="utf-8")
    (tmp_path / "stops_at_import.py").write_text("raise GeneratorExit('stop')\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry: Registry = Registry("method")
    registry.add("quitter", "exits_at_import:Method", provider="local:quitter")
    registry.add("stopper", "stops_at_import:Method", provider="local:stopper")
    with pytest.raises(PluginError) as err:  # used to be a SystemExit(0): prism ended, silently, with 0
        registry.load("quitter")
    assert str(err.value) == ("could not load 'quitter' (exits_at_import:Method) from local:quitter: module "
                              "exits_at_import tried to exit the process while loading (SystemExit(0))")
    assert isinstance(err.value.__cause__, SystemExit)
    with pytest.raises(PluginError, match=r"module stops_at_import raised GeneratorExit: stop while loading"):
        registry.load("stopper")


def test_a_target_module_that_calls_ctrl_c_still_stops_prism(tmp_path, monkeypatch):
    from prism.registry import Registry

    (tmp_path / "ctrl_c_at_import.py").write_text("raise KeyboardInterrupt\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry: Registry = Registry("method")
    registry.add("ctrl_c", "ctrl_c_at_import:Method", provider="local:ctrl_c")
    with pytest.raises(KeyboardInterrupt):
        registry.load("ctrl_c")


def test_cli_methods_show_of_a_method_whose_module_exits_fails_with_one_message(tmp_path):
    import os

    shutil.copy(REPO / "prism.toml", tmp_path / "prism.toml")
    modules = tmp_path / "site"
    modules.mkdir()
    (modules / "exiting_method.py").write_text("import sys\nsys.exit(0)\n", encoding="utf-8")
    _plugins(tmp_path, exity=_hook("register_methods",
                                   'register("exity", "exiting_method:Exity", "its module exits")'))
    path = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH", ""), str(modules)) if p)
    result = run_cli(["methods", "show", "exity"], cwd=tmp_path, env={"PYTHONPATH": path, "COLUMNS": "400"})
    assert result.code == 1, result  # was 0, with nothing printed
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    plugin_file = tmp_path / "plugins" / "exity.py"
    assert errors == [f"error: could not load 'exity' (exiting_method:Exity) from local:{plugin_file}: module "
                      "exiting_method tried to exit the process while loading (SystemExit(0))"]
    assert "Traceback" not in result.stderr


# -- main(): plugin loading runs inside the error handling ---------------------------------------
def test_ctrl_c_while_plugins_load_is_interrupted_exit_130(tmp_path):
    _plugins(tmp_path, ctrl_c="raise KeyboardInterrupt\n")
    result = run_cli(["methods", "list"], cwd=tmp_path)
    assert result.code == 130, result
    assert result.stderr == "interrupted\n" and result.stdout == ""


def test_strict_mode_error_while_plugins_load_has_a_traceback_only_with_prism_debug(tmp_path):
    _plugins(tmp_path, boom="raise RuntimeError('boom at import')\n")
    result = run_cli(["methods", "list"], cwd=tmp_path, env={"PRISM_STRICT_PLUGINS": "1"})
    assert result.code == 1, result
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: RuntimeError: boom at import"]
    assert "PRISM_DEBUG=1" in result.stderr
    debug = run_cli(["methods", "list"], cwd=tmp_path, env={"PRISM_STRICT_PLUGINS": "1", "PRISM_DEBUG": "1"})
    assert debug.code == 1 and "Traceback" in debug.stderr and "boom at import" in debug.stderr
