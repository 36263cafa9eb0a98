"""Fixtures for config tests: a fake method registry and an empty project folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from config_helpers import fake_registry

from prism.registry import Registry


@pytest.fixture
def methods(monkeypatch) -> Registry:
    """Make `prism.plugins.registry("method", ...)` return the fake registry."""
    import prism.plugins

    registry = fake_registry()
    real = prism.plugins.registry
    monkeypatch.setattr(prism.plugins, "registry",
                        lambda kind, project_dir=None: registry if kind == "method" else real(kind, project_dir))
    return registry


@pytest.fixture
def project(tmp_path) -> Path:
    """An empty project folder (no prism.toml yet)."""
    folder = tmp_path / "proj"
    folder.mkdir()
    return folder
