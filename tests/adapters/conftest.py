"""Fixtures for adapter tests (helpers live in adapter_helpers.py, importable by name)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # `import adapter_helpers` under any pytest import mode

from adapter_helpers import make_inputs  # noqa: E402


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread; two threads on a busy 2-core machine are ~100x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def inputs() -> dict[str, torch.Tensor]:
    return make_inputs()
