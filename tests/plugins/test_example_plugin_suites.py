"""Each example plugin's own test suite passes against its pip-installed distribution."""

from __future__ import annotations

import subprocess
import sys

import pytest

from .conftest import EXAMPLES, REPO, plugin_env


@pytest.mark.parametrize("name", EXAMPLES)
def test_plugin_suite_passes_installed(plugin_site, name):
    folder = REPO / "plugins" / name
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
                          cwd=folder, env=plugin_env(plugin_site), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "skipped" not in proc.stdout.splitlines()[-1]  # the installed-distribution checks ran too
