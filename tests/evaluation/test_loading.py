"""Prediction files and caption ground truth: errors name file and line."""

from __future__ import annotations

import json

import pytest

from prism.errors import DataError
from prism.evaluation.metrics import (
    TruncatedPredictionWarning,
    load_coco_gt,
    load_predictions,
    read_predictions,
)


def line(qid, text="x"):
    return json.dumps({"question_id": qid, "text": text, "answer": "x", "metadata": {}})


def test_load_predictions(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(line(1) + "\n\n" + line(2) + "\n")
    assert [r["question_id"] for r in load_predictions(path)] == [1, 2]


def test_bad_line_names_file_and_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(line(1) + "\n{not json\n" + line(3) + "\n")
    with pytest.raises(DataError, match=r"p\.jsonl:2"):
        load_predictions(path)


def test_truncated_last_line_is_reported_and_skipped(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(line(1) + "\n" + line(2) + "\n" + line(3)[:15])
    assert read_predictions(path).truncated_line == 3
    with pytest.warns(TruncatedPredictionWarning, match=r"p\.jsonl:3"):
        records = load_predictions(path)
    assert [r["question_id"] for r in records] == [1, 2]


def test_bad_last_line_with_newline_is_an_error(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(line(1) + "\n" + line(2)[:15] + "\n")
    with pytest.raises(DataError, match=":2"):
        load_predictions(path)


@pytest.mark.parametrize(
    "bad, message",
    [('{"text": "x"}', "question_id"), ('{"question_id": 1}', "text"), ("[1, 2]", "JSON object")],
)
def test_record_checks(tmp_path, bad, message):
    path = tmp_path / "p.jsonl"
    path.write_text(line(0) + "\n" + bad + "\n")
    with pytest.raises(DataError, match=message):
        load_predictions(path)


def test_duplicate_question_id(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(line(1) + "\n" + line(1) + "\n")
    with pytest.raises(DataError, match="line 1"):
        load_predictions(path)


def test_load_coco_gt_checks(tmp_path):
    path = tmp_path / "gt.json"
    good = {"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"image_id": 1, "caption": "c"}]}
    path.write_text(json.dumps(good))
    assert load_coco_gt(path) == good
    dup = {"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 1, "file_name": "b.jpg"}], "annotations": []}
    path.write_text(json.dumps(dup))
    with pytest.raises(DataError, match="used by both"):
        load_coco_gt(path)
    orphan = {"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"image_id": 2, "caption": "c"}]}
    path.write_text(json.dumps(orphan))
    with pytest.raises(DataError, match=r"annotations\[0\]"):
        load_coco_gt(path)
    with pytest.raises(DataError, match="cannot read"):
        load_coco_gt(tmp_path / "missing.json")


@pytest.mark.parametrize("content, why", [
    (b"", " (it is empty or holds only blank lines)"),
    (b"\n  \n\r\n\t\n", " (it is empty or holds only blank lines)"),
    (b'{"question_id": 1, "te', ": its only line (1) is cut off"),
])
def test_a_file_without_predictions_is_an_error_when_scoring_it(tmp_path, content, why):
    path = tmp_path / "p.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError) as err:
        load_predictions(path, allow_empty=False)
    assert err.value.message == f"prediction file {path} holds no prediction{why}"
    assert "question_id and text" in err.value.hint
    assert read_predictions(path).records == []  # reading alone still works (a run's partial file)
