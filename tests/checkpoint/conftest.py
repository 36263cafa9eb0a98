"""One tiny ft_lora run (tasks 0-1) trained once a session; each test corrupts its own copy."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

#: prism.toml edits that make the repository's default a seconds-long two-task run
QUICK_TOML = {'# tasks = "0-4"': 'tasks = "0-1"', "# max_train_samples = 200": "max_train_samples = 48",
              "# max_test_samples = 50": "max_test_samples = 6", "max_steps = 300": "max_steps = 6",
              "global_batch_size = 16": "global_batch_size = 8", "batch_size = 64": "batch_size = 8"}


@pytest.fixture(scope="session")
def trained_project(tmp_path_factory, synthetic_data) -> Path:
    """A project (its prism.toml: ft_lora on tasks 0-1, quick settings) with its run trained. Read only."""
    from prism.config import load_config
    from prism.engine.loop import train
    from tests.engine.conftest import new_project

    project = new_project(tmp_path_factory.mktemp("trained-run"), synthetic_data)
    toml = project / "prism.toml"
    text = toml.read_text()
    for old, new in QUICK_TOML.items():
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    toml.write_text(text)
    train(load_config(toml, cwd=project, env={}))
    return project


@pytest.fixture
def run_copy(trained_project, tmp_path) -> Path:
    """A copy of the trained project this test may change (the data folder stays a symlink)."""
    copy = tmp_path / "project"
    shutil.copytree(trained_project, copy, symlinks=True)
    return copy


@pytest.fixture
def cli(monkeypatch, capsys):
    """``cli(args, cwd)`` -> (exit code, stdout, stderr with whitespace collapsed), in this process."""
    from tests.checkpoint.helpers import Cli

    return Cli(monkeypatch, capsys)
