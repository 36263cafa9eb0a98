"""`prism eval` (re-scoring a run from its prediction files): an empty prediction file is damage.

No training here: the run's prediction files are written by hand where `prism train` puts them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from prism.benchmarks.base import TaskSpec
from prism.errors import DataError
from tests.conftest import REPO, run_cli

PREDICTIONS = Path("outputs/predictions/synthetic/ft_lora/Task0_llava/colour.jsonl")
RESULTS = Path("outputs/results/synthetic/ft_lora")


def _project(tmp_path: Path, synthetic_data: Path) -> Path:
    shutil.copy(REPO / "prism.toml", tmp_path / "prism.toml")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "synthetic").symlink_to(synthetic_data, target_is_directory=True)
    (tmp_path / PREDICTIONS).parent.mkdir(parents=True)
    return tmp_path


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_an_empty_prediction_file_in_a_run_is_a_data_error_naming_it(tmp_path, synthetic_data):
    project = _project(tmp_path, synthetic_data)
    test_records = json.loads((synthetic_data / "colour" / "test.json").read_text(encoding="utf-8"))
    lines = "".join(json.dumps({"question_id": r["question_id"], "text": r["answer"], "answer": r["answer"],
                                "model_id": "m"}) + "\n" for r in test_records)
    (project / PREDICTIONS).write_text(lines, encoding="utf-8")
    scored = run_cli(["eval", "--tasks", "0", "--json"], cwd=project)
    assert scored.code == 0, str(scored)
    assert json.loads(scored.stdout)["matrix"] == [[100.0]]

    before = _snapshot(project / "outputs")
    (project / PREDICTIONS).write_text("", encoding="utf-8")
    before[str(PREDICTIONS.relative_to("outputs"))] = b""
    result = run_cli(["eval", "--tasks", "0", "--json"], cwd=project, env={"COLUMNS": "400"})
    assert result.code == 1, result  # was 0, with a 0.0 in the matrix
    assert result.stdout == "" and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: prediction file {project / PREDICTIONS} holds no prediction, but task colour "
                      f"has {len(test_records)} test question(s): the file is damaged or its inference "
                      "never wrote a batch"]
    assert "prism infer" in result.stderr
    assert _snapshot(project / "outputs") == before  # the matrix of the earlier scoring is untouched


def test_only_a_task_without_test_questions_vouches_for_an_empty_prediction_file(tmp_path):
    from prism.engine.rescore import _check_test_set_is_empty

    (tmp_path / "test.json").write_text("[]", encoding="utf-8")
    (tmp_path / "one.json").write_text(json.dumps([{"question_id": 1, "text": "q", "answer": "a"}]),
                                       encoding="utf-8")
    empty = TaskSpec(name="nothing", train_file="train.json", test_file="test.json", metric="exact_match")
    _check_test_set_is_empty(tmp_path / "nothing.jsonl", empty, tmp_path, None)  # nothing to predict: no error
    one = TaskSpec(name="one", train_file="train.json", test_file="one.json", metric="exact_match")
    with pytest.raises(DataError, match=r"one\.jsonl holds no prediction, but task one has 1 test question"):
        _check_test_set_is_empty(tmp_path / "one.jsonl", one, tmp_path, None)
    gone = TaskSpec(name="gone", train_file="train.json", test_file="missing.json", metric="exact_match")
    with pytest.raises(DataError) as err:
        _check_test_set_is_empty(tmp_path / "gone.jsonl", gone, tmp_path, None)
    assert err.value.message.startswith(f"prediction file {tmp_path / 'gone.jsonl'} holds no prediction")
    assert f"file not found: {tmp_path / 'missing.json'}" in err.value.message
