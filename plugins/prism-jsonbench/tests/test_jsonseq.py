"""jsonseq: manifest parsing, data root, checks before training, and prism's own loaders on its files."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from prism.errors import ConfigError, DataError
from prism_jsonbench.benchmark import JsonSequence, read_manifest

MANIFEST = """
data_root = "../data"

[[tasks]]
name = "count"
train_file = "count/train.json"
test_file = "count/test.json"
image_root = "count"
metric = "exact_match"
max_new_tokens = 8

[[tasks]]
name = "colour"
train_file = "colour/train.json"
test_file = "colour/test.json"
image_root = "colour"
metric = "exact_match"
"""


def _config(root: Path, **kw) -> SimpleNamespace:
    values = dict(id="jsonseq", root=str(root), tasks=None, max_train_samples=None, max_test_samples=None,
                  seed=0, sub_dataset=False, overrides=None)
    return SimpleNamespace(**{**values, **kw})


@pytest.fixture
def project(tmp_path) -> Path:
    """Two tasks of prism's synthetic benchmark written small under data/, a manifest under seq/."""
    from prism.benchmarks import synthetic

    data = tmp_path / "data"
    for task in synthetic.TASKS:
        if task.spec.name in ("count", "colour"):
            synthetic.write_task(data, task, seed=0, train_size=6, test_size=3)
    (tmp_path / "seq").mkdir()
    (tmp_path / "seq" / "tasks.toml").write_text(MANIFEST)
    return tmp_path


def test_tasks_in_manifest_order_with_data_root(project):
    bench = JsonSequence(_config("seq"), project)
    specs = bench.task_specs()
    assert [s.name for s in specs] == ["count", "colour"]
    assert specs[0].max_new_tokens == 8 and specs[1].max_new_tokens == 16
    assert bench.root == (project / "data").resolve()
    assert bench.prepare() == (project / "data").resolve()


def test_json_manifest_is_equivalent(project):
    toml = project / "seq" / "tasks.toml"
    (project / "seq" / "tasks.json").write_text(json.dumps(read_manifest(toml)))
    toml.unlink()
    assert [s.name for s in JsonSequence(_config("seq"), project).task_specs()] == ["count", "colour"]


def test_files_load_with_prism_loaders(project):
    from prism.benchmarks.data import load_test_records, load_train_records

    bench = JsonSequence(_config("seq"), project)
    count = bench.task_specs()[0]
    train = load_train_records(bench.root, count)
    test = load_test_records(bench.root, count, max_samples=2)
    assert len(train) == 6 and len(test) == 2
    assert train[0]["conversations"][0]["from"] == "human"


def test_every_manifest_problem_reported_at_once(project):
    (project / "seq" / "tasks.toml").write_text(textwrap.dedent("""
        data_rot = "x"
        [[tasks]]
        name = "a"
        train_file = "a.json"
        metrc = "exact_match"
        [[tasks]]
        name = "b"
        train_file = "b.json"
        test_file = "b.json"
        metric = "exact_match"
        max_new_tokens = 0
    """))
    with pytest.raises(ConfigError) as err:
        JsonSequence(_config("seq"), project).task_specs()
    text = err.value.message
    assert "did you mean 'data_root'" in text and "did you mean 'metric'" in text
    assert "'test_file' is required" in text and "max_new_tokens" in text


def test_missing_files_and_unknown_metric_fail_before_training(project):
    text = MANIFEST.replace('metric = "exact_match"\nmax_new_tokens = 8', 'metric = "exact_mach"')
    (project / "seq" / "tasks.toml").write_text(text.replace("colour/train.json", "colour/nope.json"))
    with pytest.raises(DataError) as err:
        JsonSequence(_config("seq"), project).prepare()
    assert "did you mean 'exact_match'" in err.value.message and "colour/nope.json" in err.value.message


def test_task_selection_checks_only_selected_tasks(project):
    (project / "data" / "colour" / "train.json").unlink()
    JsonSequence(_config("seq", tasks="count"), project).prepare()
    with pytest.raises(DataError):
        JsonSequence(_config("seq"), project).prepare()


def test_no_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="tasks.toml"):
        JsonSequence(_config(tmp_path), tmp_path).task_specs()


def test_registered_lazily():
    import sys

    import prism_jsonbench.plugin
    from prism.plugins import PluginManager

    sys.modules.pop("prism_jsonbench.benchmark", None)
    manager = PluginManager(autoload=False, extra_plugins=[("jsonbench", prism_jsonbench.plugin)])
    entry = manager.registry("benchmark").entry("jsonseq")
    assert "prism_jsonbench.benchmark" not in sys.modules
    assert entry.load().id == "jsonseq"
