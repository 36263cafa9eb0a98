"""The command line sits on top: nothing in prism below it imports prism.cli, and the torchrun
workers the engine starts run `python -m prism` with the launcher's arguments."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import prism

SRC = Path(prism.__file__).resolve().parent


def test_nothing_below_the_cli_imports_it():
    importers = [path.relative_to(SRC).as_posix() for path in SRC.rglob("*.py")
                 if "cli" not in path.relative_to(SRC).parts[:1]
                 and re.search(r"\bprism\.cli\b|from prism import cli\b", path.read_text(encoding="utf-8"))]
    assert importers == ["__main__.py"]


def _python_m_prism(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prism", *args], capture_output=True, text=True,
                          env=dict(os.environ, **env), cwd=cwd, timeout=120, check=False)


def test_a_worker_runs_the_launchers_arguments(tmp_path):
    from prism.engine.launch import ARGV_ENV

    worker = _python_m_prism([], {ARGV_ENV: json.dumps(["--version"])}, tmp_path)
    assert worker.returncode == 0 and worker.stdout.startswith("prism "), worker.stderr
    # arguments of its own win: the variable only speaks for a worker started without any
    own = _python_m_prism(["methods", "list", "--json"], {ARGV_ENV: json.dumps(["--version"])}, tmp_path)
    assert own.returncode == 0 and json.loads(own.stdout), own.stderr
