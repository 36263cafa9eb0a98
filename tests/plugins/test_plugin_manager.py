"""Plugins load in isolation: a broken one is reported, everything else keeps working."""

from __future__ import annotations

import textwrap

import pytest

from prism.plugins import PluginManager


def test_builtins_register_through_hooks():
    manager = PluginManager(autoload=False)
    methods = manager.registry("method")
    assert {"zeroshot", "ft_lora"} <= set(methods.ids())
    assert methods.entry("ft_lora").provider == "builtin"
    assert "synthetic" in manager.registry("benchmark")
    assert "exact_match" in manager.registry("metric")


def _write(path, text):
    path.write_text(textwrap.dedent(text))
    return path


def test_local_plugin_registers_method(tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    _write(plugins / "mine.py", """
        from prism import hookimpl

        @hookimpl
        def register_methods(register):
            register("my_method", "json:dumps", "a local method")
    """)
    manager = PluginManager(tmp_path, autoload=False)
    entry = manager.registry("method").entry("my_method")
    assert entry.provider.startswith("local:") and entry.summary == "a local method"


def test_broken_plugin_is_isolated(tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    _write(plugins / "broken.py", "raise RuntimeError('boom at import')\n")
    manager = PluginManager(tmp_path, autoload=False)
    info = manager.infos["local:broken"]
    assert not info.ok and "boom at import" in info.errors[0]
    assert "ft_lora" in manager.registry("method")


def test_broken_hook_is_isolated(tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    _write(plugins / "badhook.py", """
        from prism import hookimpl

        @hookimpl
        def register_methods(register):
            raise ValueError("hook exploded")
    """)
    manager = PluginManager(tmp_path, autoload=False)
    assert "hook exploded" in manager.infos["local:badhook"].errors[0]
    assert "zeroshot" in manager.registry("method")


def test_strict_mode_reraises(tmp_path, monkeypatch):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    _write(plugins / "broken.py", "raise RuntimeError('boom')\n")
    monkeypatch.setenv("PRISM_STRICT_PLUGINS", "1")
    with pytest.raises(RuntimeError, match="boom"):
        PluginManager(tmp_path, autoload=False)


def test_name_clash_reported_with_both_providers(tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    _write(plugins / "clash.py", """
        from prism import hookimpl

        @hookimpl
        def register_methods(register):
            register("ft_lora", "json:dumps", "impostor")
    """)
    manager = PluginManager(tmp_path, autoload=False)
    errors = manager.infos["local:clash"].errors
    assert errors and "builtin" in errors[0] and "local:" in errors[0]
    assert manager.registry("method").entry("ft_lora").provider == "builtin"


def test_disabled_plugin(tmp_path, monkeypatch):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    _write(plugins / "mine.py", """
        from prism import hookimpl

        @hookimpl
        def register_methods(register):
            register("my_method", "json:dumps", "x")
    """)
    monkeypatch.setenv("PRISM_DISABLED_PLUGINS", "local:mine")
    manager = PluginManager(tmp_path, autoload=False)
    assert "my_method" not in manager.registry("method")
