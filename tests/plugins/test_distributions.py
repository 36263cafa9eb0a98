"""Installed plugin distributions end to end: discovery, isolation, clashes and loading controls.

Every check runs a real `prism` process that sees distributions pip-installed into a
throwaway folder (see conftest.py): the example plugins of plugins/ and two that
misbehave on purpose (one raises on import, one clashes with prism-lwf and tries to
replace a core command).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from .conftest import REPO, prism

CLEAN = {"PRISM_DISABLED_PLUGINS": "prism-broken,prism-clash"}


@pytest.fixture
def project(tmp_path) -> Path:
    shutil.copy(REPO / "prism.toml", tmp_path / "prism.toml")
    return tmp_path


def _json(result) -> object:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _rows(plugin_site, project, **env) -> dict[str, dict]:
    return {row["name"]: row for row in _json(prism(plugin_site, "plugins", "--json", cwd=project, **env))}


def test_installed_plugins_are_listed_with_distribution_and_version(plugin_site, project):
    methods = {m["id"]: m for m in _json(prism(plugin_site, "methods", "list", "--json", cwd=project, **CLEAN))}
    assert methods["lwf"]["provider"] == "prism-lwf==0.1.0"
    assert methods["ft_lora"]["provider"] == "builtin"
    listed = prism(plugin_site, "benchmarks", "list", "--json", cwd=project, **CLEAN)
    benchmarks = {b["id"]: b for b in _json(listed)}
    assert benchmarks["jsonseq"]["provider"] == "prism-jsonbench==0.1.0"
    human = prism(plugin_site, "methods", "list", cwd=project, **CLEAN)
    assert human.returncode == 0 and "prism-lwf==0.1.0" in human.stderr

    shown = _json(prism(plugin_site, "methods", "show", "lwf", "--json", cwd=project, **CLEAN))
    params = {p["name"]: p["default"] for p in shown["params"]}
    assert params["lambda_distill"] == 1.0 and params["temperature"] == 2.0 and params["r"] == 16


def test_plugins_command_shows_hooks_and_errors(plugin_site, project):
    rows = _rows(plugin_site, project)
    lwf = rows["lwf"]
    assert (lwf["distribution"], lwf["version"], lwf["source"]) == ("prism-lwf", "0.1.0", "entry point")
    assert lwf["hooks"] == ["register_methods"]
    assert rows["jsonbench"]["provides"] == {"benchmark": ["jsonseq"]}
    assert rows["clash"]["hooks"] == ["register_commands", "register_methods"]
    table = prism(plugin_site, "plugins", cwd=project)
    assert table.returncode == 0 and "prism-jsonbench" in table.stderr and "exploded" in table.stderr


def test_broken_distribution_is_isolated(plugin_site, project):
    broken = _rows(plugin_site, project)["broken"]
    assert broken["status"] == "error" and not broken["ok"]
    assert "RuntimeError: prism-broken exploded at import" in broken["errors"][0]
    assert broken["distribution"] == "prism-broken"
    listed = prism(plugin_site, "methods", "list", "--json", cwd=project)
    assert listed.returncode == 0 and "ft_lora" in listed.stdout  # everything else still works
    strict = prism(plugin_site, "methods", "list", cwd=project, PRISM_STRICT_PLUGINS="1")
    assert strict.returncode != 0 and "exploded" in strict.stderr


def test_name_clash_names_both_providers(plugin_site, project):
    rows = _rows(plugin_site, project)
    clashes = [e for name in ("lwf", "clash") for e in rows[name]["errors"] if "registered twice" in e]
    assert len(clashes) == 1, rows
    assert "prism-lwf==0.1.0" in clashes[0] and "prism-clash==0.1.0" in clashes[0]
    assert "clash_only" in rows["clash"]["provides"]["method"]  # only the clashing id is lost


def test_plugin_commands_added_core_commands_protected(plugin_site, project):
    hello = prism(plugin_site, "clash-hello", cwd=project)
    assert hello.returncode == 0 and "hello from prism-clash" in hello.stdout
    errors = _rows(plugin_site, project)["clash"]["errors"]
    assert any("'train' shadows a core prism command" in e for e in errors)
    helped = prism(plugin_site, "train", "--help", cwd=project)
    assert helped.returncode == 0 and "--method" in helped.stdout  # still the core command


def test_load_only_listed_distributions(plugin_site, project):
    rows = _rows(plugin_site, project, PRISM_LOAD_PLUGINS="prism-lwf")
    assert rows["lwf"]["status"] == "ok" and not rows["lwf"]["errors"]
    for name in ("jsonbench", "broken", "clash"):
        assert rows[name]["status"] == "disabled" and "PRISM_LOAD_PLUGINS" in rows[name]["disabled"]
    assert _rows(plugin_site, project, PRISM_LOAD_PLUGINS="")["lwf"]["status"] == "disabled"
    # an explicit list wins over the blanket autoload switch the test suite uses
    assert _rows(plugin_site, project, PRISM_LOAD_PLUGINS="prism_lwf",
                 PRISM_DISABLE_PLUGIN_AUTOLOAD="1")["lwf"]["status"] == "ok"


def test_disable_by_env_and_by_prism_toml(plugin_site, project):
    rows = _rows(plugin_site, project, PRISM_DISABLED_PLUGINS="prism-broken, clash")
    assert rows["broken"]["status"] == rows["clash"]["status"] == "disabled"
    assert not any(row["errors"] for row in rows.values())
    toml = project / "prism.toml"
    toml.write_text(toml.read_text().replace("disable = []", 'disable = ["prism-broken", "jsonbench"]'))
    rows = _rows(plugin_site, project)
    reason = "disabled by [plugins] disable in prism.toml"
    assert rows["broken"]["disabled"] == rows["jsonbench"]["disabled"] == reason
    assert rows["lwf"]["status"] in ("ok", "error")  # loaded (it may still report the clash)


def test_trace_plugins(plugin_site, project):
    result = prism(plugin_site, "methods", "list", "--json", cwd=project, PRISM_TRACE_PLUGINS="1", **CLEAN)
    assert result.returncode == 0
    trace = [line for line in result.stderr.splitlines() if line.startswith("[prism plugins]")]
    assert any("load lwf (prism-lwf==0.1.0)" in line and " ms" in line for line in trace)
    assert any("registered method 'lwf' -> 'prism_lwf.method:LwF'" in line for line in trace)
    assert any("skip broken (prism-broken==0.1.0): disabled by PRISM_DISABLED_PLUGINS" in line for line in trace)
    assert json.loads(result.stdout)  # tracing never pollutes stdout


COMPLETION_PROBE = r"""
import sys
from prism.cli.app import main
try:
    main([])
except SystemExit:
    pass
sys.stderr.write("TORCH=%s\n" % ("torch" in sys.modules))
"""


def _complete(plugin_site, project, line: str) -> tuple[list[str], str]:
    import subprocess
    import sys

    from .conftest import plugin_env

    env = plugin_env(plugin_site, _PRISM_COMPLETE="complete_bash", COMP_WORDS=line,
                     COMP_CWORD=str(len(line.split(" ")) - 1), **CLEAN)
    proc = subprocess.run([sys.executable, "-c", COMPLETION_PROBE], cwd=project, env=env,
                          capture_output=True, text=True, timeout=60)
    return proc.stdout.split(), proc.stderr


def test_completion_offers_plugin_ids_and_manifest_tasks_without_torch(plugin_site, project):
    methods, stderr = _complete(plugin_site, project, "prism train --method ")
    assert {"ft_lora", "lwf", "zeroshot"} <= set(methods) and "TORCH=False" in stderr
    (project / "seq").mkdir()
    manifest = REPO / "plugins" / "prism-jsonbench" / "examples" / "shapes-reversed" / "tasks.toml"
    shutil.copy(manifest, project / "seq" / "tasks.toml")
    toml = project / "prism.toml"
    toml.write_text(toml.read_text().replace('id = "synthetic"', 'id = "jsonseq"')
                    .replace('root = "data/synthetic"', 'root = "seq"'))
    tasks, stderr = _complete(plugin_site, project, "prism train --tasks ")
    assert tasks == ["position", "count", "colour"] and "TORCH=False" in stderr
