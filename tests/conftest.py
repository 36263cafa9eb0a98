"""Hermetic tests: no installed plugins autoload, no hub access, quiet libraries."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

os.environ["PRISM_DISABLE_PLUGIN_AUTOLOAD"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
for name in ("PRISM_CONFIG", "PRISM_DEBUG", "PRISM_STRICT_PLUGINS", "PRISM_METHOD", "PRISM_BACKBONE",
             "PRISM_MODEL", "PRISM_BENCHMARK", "PRISM_OUTPUT_DIR", "PRISM_SEED", "PRISM_TASKS",
             "PRISM_DATA_ROOT", "PRISM_DISABLED_PLUGINS"):
    os.environ.pop(name, None)


@pytest.fixture(autouse=True)
def _fresh_plugin_manager():
    from prism.plugins import reset_manager

    reset_manager()
    yield
    reset_manager()


@pytest.fixture
def repo_root() -> Path:
    return REPO


def run_cli(args: list[str], cwd: Path | None = None, env: dict | None = None) -> "CliResult":
    """Run `python -m prism ARGS` in a subprocess (a real process: exit codes, stdout/stderr split)."""
    import subprocess

    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env.setdefault("COLUMNS", "200")
    proc = subprocess.run([sys.executable, "-m", "prism", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=600)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


class CliResult:
    def __init__(self, code: int, stdout: str, stderr: str):
        self.code, self.stdout, self.stderr = code, stdout, stderr

    def __repr__(self) -> str:
        return f"CliResult(code={self.code}, stdout={self.stdout[-2000:]!r}, stderr={self.stderr[-3000:]!r})"


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> Path:
    """The generated benchmark, shared by every test of the session (it is deterministic)."""
    from types import SimpleNamespace

    from prism.benchmarks.synthetic import SyntheticBenchmark

    root = tmp_path_factory.mktemp("synthetic-data")
    config = SimpleNamespace(id="synthetic", root=str(root), seed=0, tasks=None, max_train_samples=None,
                             max_test_samples=None, sub_dataset=False)
    SyntheticBenchmark(config, root).prepare()
    return root


@pytest.fixture
def project(tmp_path, synthetic_data) -> Path:
    shutil.copy(REPO / "prism.toml", tmp_path / "prism.toml")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "synthetic").symlink_to(synthetic_data, target_is_directory=True)
    return tmp_path


@pytest.fixture(scope="session")
def shared_run(tmp_path_factory, synthetic_data):
    """``shared_run(*sets, method=...)`` -> (project, resolved, outcome): a quick run, trained once a session.

    Tests that only read a run's files share it (training is what makes the suite slow); a test
    that changes them works on ``copy_project(project, tmp_path)``. ``sets`` are --set style
    assignments on top of tests.engine.conftest.QUICK.
    """
    from prism.engine.loop import train
    from tests.engine.conftest import new_project, resolve

    done: dict = {}

    def run(*sets: str, method: str = "ft_lora"):
        key = (method, *sets)
        if key not in done:
            project = new_project(tmp_path_factory.mktemp(f"run-{method}"), synthetic_data)
            resolved = resolve(project, *sets, method__id=method)
            done[key] = (project, resolved, train(resolved))
        return done[key]

    return run


def copy_project(project: Path, folder: Path) -> Path:
    """A copy of a trained project that a test may change (its data stays a symlink)."""
    copy = folder / "project"
    shutil.copytree(project, copy, symlinks=True)
    return copy
