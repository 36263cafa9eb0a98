"""Quick settings for training on the embedded default (the `project` fixture is in tests/conftest.py),
and the two-task run the distributed tests share."""

from __future__ import annotations

from pathlib import Path

import pytest

QUICK = [
    "train.max_steps=6", "train.global_batch_size=8", "benchmark.max_train_samples=48",
    "benchmark.max_test_samples=6", "infer.batch_size=8",
]


def resolve(project: Path, *sets: str, **flags):
    from prism.config import load_config

    return load_config(project / "prism.toml", cwd=project, env={}, sets=[*QUICK, *sets],
                       flags={k.replace("__", "."): v for k, v in flags.items()})


# -- the two-task run the distributed tests compare ----------------------------------------------
#: EWC on two tasks, 6 steps of global batch 8 each; dropout 0 and a strong penalty, so that a
#: wrong gradient (or a Fisher that is not averaged over ranks) shows in the adapters; 4 test
#: samples in batches of 2, so that each of two ranks generates a batch of every task
EWC_RUN = ["--tasks", "0-1", "--method", "ewc", "--set", "train.max_steps=6", "--set", "train.global_batch_size=8",
           "--set", "benchmark.max_train_samples=48", "--set", "benchmark.max_test_samples=4",
           "--set", "infer.batch_size=2",
           "--set", "method.ewc.dropout=0.0", "--set", "method.ewc.lambda_ewc=1e6",
           "--set", "method.ewc.fisher_batches=4"]


def torch_extensions_dir() -> Path:
    """DeepSpeed's compiled extensions, built at most once per checkout (git-ignored .cache/)."""
    from tests.conftest import REPO

    return REPO / ".cache" / "torch_extensions"


def new_project(folder: Path, synthetic_data: Path) -> Path:
    import shutil

    from tests.conftest import REPO

    shutil.copy(REPO / "prism.toml", folder / "prism.toml")
    (folder / "data").mkdir()
    (folder / "data" / "synthetic").symlink_to(synthetic_data, target_is_directory=True)
    return folder


@pytest.fixture(scope="session")
def ewc_run(tmp_path_factory, synthetic_data):
    """``ewc_run(name, *extra)`` -> (project, CliResult) of `prism train EWC_RUN *extra`, made once a session."""
    from tests.conftest import run_cli

    done: dict = {}

    def run(name: str, *extra: str):
        if name not in done:
            project = new_project(tmp_path_factory.mktemp(name), synthetic_data)
            env = {"OMP_NUM_THREADS": "1", "TORCH_EXTENSIONS_DIR": str(torch_extensions_dir())}
            result = run_cli(["train", *EWC_RUN, *extra], cwd=project, env=env)
            assert result.code == 0, str(result)
            done[name] = (project, result)
        return done[name]

    return run
