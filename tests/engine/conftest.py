"""Quick settings for training on the embedded default (the `project` fixture is in tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

QUICK = [
    "train.max_steps=6", "train.global_batch_size=8", "benchmark.max_train_samples=48",
    "benchmark.max_test_samples=6", "infer.batch_size=8",
]


def resolve(project: Path, *sets: str, **flags):
    from prism.config import load_config

    return load_config(project / "prism.toml", cwd=project, env={}, sets=[*QUICK, *sets],
                       flags={k.replace("__", "."): v for k, v in flags.items()})
