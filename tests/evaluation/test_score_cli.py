"""`prism eval score` in a real process: a file without a single prediction is bad input, not 0.00."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli

GOOD = "".join(json.dumps({"question_id": i, "text": text, "answer": "red"}) + "\n"
               for i, text in enumerate(["red", "blue"]))


@pytest.mark.parametrize("content", ["", "\n \n\n", '{"question_id": 1, "text": "re'],
                         ids=["empty", "blank-lines", "only-a-cut-off-line"])
def test_scoring_a_file_without_predictions_fails_with_one_message(tmp_path, content):
    path = tmp_path / "predictions.jsonl"
    path.write_text(content, encoding="utf-8")
    result = run_cli(["eval", "score", str(path), "--metric", "exact_match", "--json"], cwd=tmp_path)
    assert result.code == 1, result
    assert result.stdout == "" and "Traceback" not in result.stderr and "over 0" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: prediction file {path} holds no prediction"
                      + (": its only line (1) is cut off" if content.startswith("{")
                         else " (it is empty or holds only blank lines)")]
    assert "hint:" in result.stderr and "question_id and text" in result.stderr
    assert path.read_text(encoding="utf-8") == content


def test_a_file_with_predictions_still_scores(tmp_path):
    path = tmp_path / "predictions.jsonl"
    path.write_text(GOOD, encoding="utf-8")
    result = run_cli(["eval", "score", str(path), "--metric", "exact_match", "--json"], cwd=tmp_path)
    assert result.code == 0, result
    assert json.loads(result.stdout)["score"] == 50.0 and json.loads(result.stdout)["n"] == 2
