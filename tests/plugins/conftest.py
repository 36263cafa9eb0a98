"""Plugin distributions installed for real (pip) into a throwaway folder, never into the venv.

``pip install --target`` writes the packages and their ``*.dist-info`` (entry points
included) into a temporary folder; subprocesses that put it on PYTHONPATH see exactly
what a user sees after ``pip install``, and nothing is left behind in the environment.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = ("prism-lwf", "prism-jsonbench")

#: Distributions that misbehave on purpose: name -> (entry-point name, plugin module source).
FIXTURE_DISTS: dict[str, tuple[str, str]] = {
    "prism-broken": ("broken", """
        raise RuntimeError("prism-broken exploded at import")
    """),
    "prism-clash": ("clash", """
        import typer

        from prism import hookimpl


        @hookimpl
        def register_methods(register):
            register("lwf", "json:dumps", "an impostor of prism-lwf's lwf")
            register("clash_only", "json:dumps", "a method nobody else registers")


        @hookimpl
        def register_commands(app):
            @app.command("train")
            def train():
                "Tries to replace the core command."

            @app.command("clash-hello")
            def hello():
                "A command added by a plugin."
                typer.echo("hello from prism-clash")
    """),
}


def _fixture_dist(folder: Path, dist: str, entry: str, source: str) -> Path:
    package = dist.replace("-", "_")
    root = folder / dist
    (root / package).mkdir(parents=True)
    (root / package / "__init__.py").write_text(textwrap.dedent(source).lstrip())
    (root / "pyproject.toml").write_text(textwrap.dedent(f"""
        [build-system]
        requires = ["setuptools>=68"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "{dist}"
        version = "0.1.0"

        [project.entry-points.prism_mcit]
        {entry} = "{package}"

        [tool.setuptools]
        packages = ["{package}"]
    """))
    return root


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory) -> Path:
    """A folder holding the example plugins and the fixture distributions, pip-installed."""
    work = tmp_path_factory.mktemp("plugin-sources")
    sources = []
    for name in EXAMPLES:  # build from copies: pip builds in place and would leave build/ behind
        sources.append(shutil.copytree(REPO / "plugins" / name, work / name,
                                       ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")))
    sources += [_fixture_dist(work, dist, entry, source) for dist, (entry, source) in FIXTURE_DISTS.items()]
    site = tmp_path_factory.mktemp("plugin-site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(site), *map(str, sources)],
                   check=True, capture_output=True, text=True, timeout=300)
    return site


def plugin_env(site: Path, **extra: str) -> dict[str, str]:
    """The environment of a `prism` process that sees the installed plugins (autoload on)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRISM_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    env["COLUMNS"] = "200"
    env.update(extra)
    return env


def prism(site: Path, *args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prism", *args], cwd=cwd, env=plugin_env(site, **env),
                          capture_output=True, text=True, timeout=300)


#: Caps that make `prism train` on the embedded default take seconds.
QUICK_TRAIN = ["--set", "train.max_steps=3", "--set", "train.global_batch_size=8",
               "--set", "benchmark.max_train_samples=16", "--set", "benchmark.max_test_samples=2",
               "--set", "infer.batch_size=8"]
#: Only the example plugins; one thread (a tiny model is fastest on one).
TRAIN_ENV = {"PRISM_LOAD_PLUGINS": "prism-lwf,prism-jsonbench", "OMP_NUM_THREADS": "1"}


@pytest.fixture
def default_project(tmp_path, synthetic_data) -> Path:
    """A project on the embedded default: prism.toml plus the generated data."""
    from prism.backbones.llava import available_builtins

    if "tiny-llava" not in available_builtins():
        pytest.skip("the embedded model builtin:tiny-llava is not built in this checkout")
    shutil.copy(REPO / "prism.toml", tmp_path / "prism.toml")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "synthetic").symlink_to(synthetic_data, target_is_directory=True)
    return tmp_path
