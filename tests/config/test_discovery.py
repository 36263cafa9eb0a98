"""The one config-file discovery: what it finds, and that it stays cheap to import."""

from __future__ import annotations

import subprocess
import sys

from prism.config.discovery import CONFIG_FILE_NAME, find_config


def test_named_file_env_and_search(tmp_path):
    project = tmp_path / "project"
    deep = project / "a" / "b"
    deep.mkdir(parents=True)
    (project / CONFIG_FILE_NAME).write_text("")
    found = find_config(cwd=deep, env={})
    assert (found.path, found.named_by) == (project / CONFIG_FILE_NAME, None)
    assert find_config(cwd=tmp_path, env={}) is None
    assert find_config(cwd=deep, env={}, search=False) is None
    # a folder means its prism.toml; relative names are under cwd; a named file need not exist
    assert find_config("..", cwd=deep, env={}).path.resolve() == project / "a" / CONFIG_FILE_NAME
    named = find_config("other.toml", cwd=project, env={"PRISM_CONFIG": str(project)})
    assert (named.path, named.named_by) == (project / "other.toml", "config file")
    by_env = find_config(cwd=tmp_path, env={"PRISM_CONFIG": str(project)})
    assert (by_env.path, by_env.named_by) == (project / CONFIG_FILE_NAME, "PRISM_CONFIG")
    assert find_config(cwd=deep, env={"PRISM_CONFIG": ""}).named_by is None  # empty = unset


def test_the_cheap_config_modules_import_no_pydantic():
    probe = ("import sys, prism.config.discovery, prism.config.env_names, prism.config.toml_compat, prism.plugins; "
             "print(sorted(m for m in ('pydantic', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
