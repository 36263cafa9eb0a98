"""`prism --help`, `prism methods list` and completion never import torch or transformers."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = r"""
import sys
from prism.cli.app import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
heavy = sorted(m for m in ("torch", "transformers", "peft", "accelerate") if m in sys.modules)
sys.stderr.write("HEAVY=" + ",".join(heavy) + "\n")
"""


@pytest.mark.parametrize("args, env", [
    (["--help"], {}),
    (["methods", "list"], {}),
    (["methods", "list", "--json"], {}),
    (["plugins"], {}),
    (["train", "--help"], {}),
    (["backbones", "list"], {}),
    (["backbones", "show", "--help"], {}),
    ([], {"_PRISM_COMPLETE": "complete_bash", "COMP_WORDS": "prism tr", "COMP_CWORD": "1"}),
])
def test_no_heavy_imports(args, env, tmp_path):
    full = dict(os.environ, **env)
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True,
                          env=full, cwd=tmp_path, timeout=120)
    heavy = [line for line in proc.stderr.splitlines() if line.startswith("HEAVY=")]
    assert heavy, proc.stderr
    assert heavy[-1] == "HEAVY=", f"{args}: imported {heavy[-1]}"


def test_completion_candidates(tmp_path):
    env = dict(os.environ, _PRISM_COMPLETE="complete_bash", COMP_WORDS="prism tr", COMP_CWORD="1")
    proc = subprocess.run([sys.executable, "-m", "prism"], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)
    assert "train" in proc.stdout


def test_version():
    proc = subprocess.run([sys.executable, "-m", "prism", "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("prism ")
