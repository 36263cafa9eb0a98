"""The lazy registry: ids, did-you-mean, clashes naming both providers."""

from __future__ import annotations

import pytest

from prism.errors import PluginError, UsageError
from prism.registry import Registry


def test_lazy_entry_imports_on_load_only():
    reg: Registry = Registry("method")
    reg.add("x", "json:dumps", "dump json", provider="builtin")
    entry = reg.entry("x")
    assert entry._loaded is None
    import json

    assert reg.load("x") is json.dumps


def test_unknown_id_suggests_close_name():
    reg: Registry = Registry("method")
    reg.add("ft_lora", "json:dumps", provider="builtin")
    with pytest.raises(UsageError, match="did you mean 'ft_lora'"):
        reg.entry("ft_lroa")


def test_clash_names_both_providers():
    reg: Registry = Registry("method")
    reg.add("ewc", "json:dumps", provider="builtin")
    with pytest.raises(PluginError) as info:
        reg.add("ewc", "json:loads", provider="prism-ewc==1.0")
    assert "builtin" in str(info.value) and "prism-ewc==1.0" in str(info.value)


def test_bad_target_is_plugin_error():
    reg: Registry = Registry("method")
    reg.add("bad", "no_such_module_xyz:Thing", provider="local:p.py")
    with pytest.raises(PluginError, match="local:p.py"):
        reg.load("bad")
