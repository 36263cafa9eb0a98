"""A throwaway prism project on the embedded default, sized to train in seconds."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

QUICK = [
    "train.max_steps=6", "train.global_batch_size=8", "benchmark.max_train_samples=48",
    "benchmark.max_test_samples=6", "infer.batch_size=8",
]


@pytest.fixture
def project(tmp_path, synthetic_data) -> Path:
    shutil.copy(REPO / "prism.toml", tmp_path / "prism.toml")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "synthetic").symlink_to(synthetic_data, target_is_directory=True)
    return tmp_path


def resolve(project: Path, *sets: str, **flags):
    from prism.config import load_config

    return load_config(project / "prism.toml", cwd=project, env={}, sets=[*QUICK, *sets],
                       flags={k.replace("__", "."): v for k, v in flags.items()})
