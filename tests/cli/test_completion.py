"""Shell completion: the committed scripts are current; a real bash completes commands, ids, task
names and checkpoint names; completers follow the config's precedence; no completion imports torch."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from prism.cli import completion
from prism.cli.completion import SHELLS, completion_script
from prism.plugins import reset_manager

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "completions"


@pytest.fixture
def project(tmp_path) -> Path:
    """A project with the default prism.toml and checkpoints of two runs (folders only)."""
    shutil.copy(REPO / "prism.toml", tmp_path / "prism.toml")
    for run, names in (("synthetic/ft_lora", ("Task1_llava", "Task0_llava")), ("ucit/ewc", ("Task3_llava",))):
        for name in names:
            (tmp_path / "outputs" / "checkpoints" / run / name).mkdir(parents=True)
    (tmp_path / "outputs" / "checkpoints" / "synthetic" / "ft_lora" / "notes").mkdir()
    return tmp_path


def _ctx(**params) -> SimpleNamespace:
    """What a completer reads of typer's context: the parameters parsed so far."""
    return SimpleNamespace(params=params, parent=None)


# -- the static scripts ---------------------------------------------------------------------
@pytest.mark.parametrize("shell", sorted(SHELLS))
def test_committed_scripts_are_current(shell):
    committed = (SCRIPTS / SHELLS[shell]).read_text(encoding="utf-8")
    assert committed == completion_script(shell), (
        f"completions/{SHELLS[shell]} is stale: run `python -m prism.cli.completion completions/`")


def test_install_instructions_cover_every_script():
    readme = (SCRIPTS / "README.md").read_text(encoding="utf-8")
    assert all(name in readme for name in SHELLS.values())


# -- a real bash ------------------------------------------------------------------------------
@pytest.fixture
def bash_complete(project, tmp_path_factory):
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash on this machine")
    bin_dir = tmp_path_factory.mktemp("bin")
    wrapper = bin_dir / "prism"  # the console script of whichever interpreter runs the tests
    wrapper.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m prism "$@"\n')
    wrapper.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")

    def complete(line: str) -> list[str]:
        words = shlex.split(line) + ([""] if line.endswith(" ") else [])
        script = (f"source {shlex.quote(str(SCRIPTS / 'prism.bash'))}\n"
                  "complete -p prism >/dev/null || exit 3\n"
                  f"COMP_WORDS=({' '.join(shlex.quote(w) for w in words)}); COMP_CWORD={len(words) - 1}\n"
                  "_prism_completion prism\n"
                  'printf "%s\\n" "${COMPREPLY[@]}"\n')
        proc = subprocess.run([bash, "--norc", "--noprofile", "-c", script], cwd=project, env=env,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return [line for line in proc.stdout.splitlines() if line]

    return complete


def test_bash_completes_commands_ids_tasks_and_checkpoints(bash_complete):
    assert bash_complete("prism tr") == ["train"]
    assert {"ft_lora", "zeroshot"} <= set(bash_complete("prism train --method "))
    assert bash_complete("prism train --method ze") == ["zeroshot"]
    assert bash_complete("prism ckpt inspect ") == ["Task0_llava", "Task1_llava"]
    assert bash_complete("prism ckpt inspect Task1") == ["Task1_llava"]
    assert bash_complete("prism train --tasks co") == ["colour", "count"]
    assert bash_complete("prism eval score p.jsonl --metric vqa") == ["vqa_accuracy"]
    assert "synthetic" in bash_complete("prism data check -b ")


# -- completers -------------------------------------------------------------------------------
def test_settings_precedence(project, monkeypatch):
    monkeypatch.chdir(project)
    monkeypatch.setenv("PRISM_METHOD", "from_env")
    got = completion.settings(_ctx(set_=["method.id=from_set", "project.output_dir='elsewhere'"]))
    assert got.get("method.id") == "from_set" and got.get("benchmark.id") == "synthetic"
    assert got.path("project.output_dir") == project / "elsewhere"
    assert completion.settings(_ctx(method="from_flag", set_=["method.id=x"])).get("method.id") == "from_flag"
    assert completion.settings(_ctx()).get("method.id") == "from_env"
    monkeypatch.delenv("PRISM_METHOD")
    assert completion.settings(_ctx()).get("method.id") == "ft_lora"  # prism.toml
    assert completion.settings(_ctx(config=project / "prism.toml")).project_dir == project


def test_checkpoints_of_the_configured_run_else_every_run(project, monkeypatch):
    monkeypatch.chdir(project)
    names = completion.complete_checkpoint(_ctx(), "")
    assert names == [("Task0_llava", "synthetic/ft_lora"), ("Task1_llava", "synthetic/ft_lora")]
    everything = dict(completion.complete_checkpoint(_ctx(method="olora"), ""))
    assert everything == {"Task0_llava": "synthetic/ft_lora", "Task1_llava": "synthetic/ft_lora",
                          "Task3_llava": "ucit/ewc"}
    assert completion.complete_checkpoint(_ctx(output_dir=str(project / "none")), "") == []


def test_task_names_static_metadata_and_dynamic(project, monkeypatch):
    monkeypatch.chdir(project)
    assert [n for n, _ in completion.complete_tasks(_ctx(benchmark="ucit"), "")][:2] == ["ImageNet-R", "ArxivQA"]
    assert [n for n, _ in completion.complete_tasks(_ctx(), "colour,c")] == ["colour,count", "colour,caption"]
    (project / "plugins").mkdir()
    (project / "plugins" / "benches.py").write_text(textwrap.dedent('''
        from prism import hookimpl
        from prism.benchmarks.base import Benchmark, TaskSpec

        class FromDisk(Benchmark):
            """Task names known only from a file under root."""
            def task_specs(self):
                names = (self.root / "names.txt").read_text().split()
                return [TaskSpec(n, "t.json", "s.json", "exact_match") for n in names]

        @hookimpl
        def register_benchmarks(register):
            register("fromdisk", FromDisk, "reads names.txt")
            register("declared", "no_such_module:Nope", "names as metadata", tasks=["alpha", "beta"])
    '''))
    reset_manager()  # the registry was built before plugins/ existed
    (project / "seq").mkdir()
    (project / "seq" / "names.txt").write_text("first second\n")
    sets = ["benchmark.root='seq'"]
    from_disk = completion.complete_tasks(_ctx(benchmark="fromdisk", set_=sets), "")
    assert [n for n, _ in from_disk] == ["first", "second"]
    assert [n for n, _ in completion.complete_tasks(_ctx(benchmark="declared"), "")] == ["alpha", "beta"]


def test_completers_never_raise(project, monkeypatch):
    monkeypatch.chdir(project)
    (project / "prism.toml").write_text("[method\nid = ")  # half-edited
    assert ("ft_lora", "one LoRA trained on each task in turn, nothing against forgetting") in \
        completion.complete_method(_ctx(), "")
    assert completion.complete_tasks(_ctx(benchmark="no-such-benchmark"), "") == []


# -- no torch ------------------------------------------------------------------------------------
PROBE = r"""
import sys
from prism.cli.app import main
try:
    main([])
except SystemExit:
    pass
heavy = sorted(m for m in ("torch", "transformers", "peft", "accelerate") if m in sys.modules)
sys.stderr.write("HEAVY=" + ",".join(heavy) + "\n")
"""


@pytest.mark.parametrize("line", [
    "prism tr", "prism train --method ", "prism train --tasks ", "prism ckpt inspect ",
    "prism eval score p.jsonl --metric ", "prism methods show ",
])
def test_completion_imports_no_torch(project, line):
    words = line.split(" ")
    env = dict(os.environ, _PRISM_COMPLETE="complete_bash", COMP_WORDS=line, COMP_CWORD=str(len(words) - 1))
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, cwd=project,
                          timeout=60)
    assert proc.stdout.strip(), proc.stderr  # it did complete something
    heavy = [x for x in proc.stderr.splitlines() if x.startswith("HEAVY=")]
    assert heavy == ["HEAVY="], f"{line!r} imported {heavy}"
