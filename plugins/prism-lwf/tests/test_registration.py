"""The plugin registers ``lwf`` by name, lazily, through prism's own plugin manager."""

from __future__ import annotations

import sys
from importlib import metadata

import pytest

from prism.plugins import PluginManager


def test_registers_lwf_without_importing_the_method():
    import prism_lwf.plugin

    sys.modules.pop("prism_lwf.method", None)
    manager = PluginManager(autoload=False, extra_plugins=[("lwf", prism_lwf.plugin)])
    entry = manager.registry("method").entry("lwf")
    assert entry.target == "prism_lwf.method:LwF" and "prism_lwf.method" not in sys.modules
    cls = entry.load()
    assert cls.id == "lwf" and cls.Params().lambda_distill == 1.0 and cls.Params().temperature == 2.0


def test_entry_point_declared_when_installed():
    try:
        dist = metadata.distribution("prism-lwf")
    except metadata.PackageNotFoundError:
        pytest.skip("prism-lwf is not installed (tests run from the source tree)")
    assert any(ep.group == "prism_mcit" and ep.value == "prism_lwf.plugin" for ep in dist.entry_points)
