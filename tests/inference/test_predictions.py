"""Prediction files: resumable appends, and the shards of several ranks merged without loss or duplicates."""

from __future__ import annotations

import json

from prism.inference import predictions as pred_files


def _line(qid, model="m", rank=0):
    return {"question_id": qid, "text": f"a{qid}", "model_id": model, "metadata": {"rank": rank}}


def test_a_torn_or_foreign_line_is_dropped_only_by_the_files_writer(tmp_path):
    path = tmp_path / "t.jsonl"
    pred_files.append(path, [_line(1), _line(2, model="old")])
    with open(path, "a") as handle:
        handle.write('{"question_id": 3')  # killed mid-write
    before = path.read_text()
    assert [r["question_id"] for r in pred_files.read_done(path, "m", clean=False)] == [1]
    assert path.read_text() == before  # a reader that is not the writer leaves the file alone
    assert [r["question_id"] for r in pred_files.read_done(path, "m")] == [1]
    assert path.read_text() == json.dumps(_line(1)) + "\n"


def test_merging_shards_keeps_every_answer_once_even_when_a_merge_was_cut_off(tmp_path):
    path = tmp_path / "t.jsonl"
    pred_files.append(path, [_line(1)])
    pred_files.append(pred_files.shard_path(path, 0), [_line(1), _line(2)])  # 1: already merged once
    pred_files.append(pred_files.shard_path(path, 1), [_line(3, rank=1), _line(4, model="old", rank=1)])
    with open(pred_files.shard_path(path, 1), "a") as handle:
        handle.write('{"question_id": 5')
    other_task = pred_files.shard_path(tmp_path / "u.jsonl", 0)
    pred_files.append(other_task, [_line(9)])
    assert pred_files.merge_shards(path, "m") == 2
    assert [r["question_id"] for r in pred_files.read_done(path, "m")] == [1, 2, 3]
    assert not pred_files.shard_path(path, 0).exists() and not pred_files.shard_path(path, 1).exists()
    assert other_task.exists()  # another task's shard is not this file's
    assert pred_files.merge_shards(path, "m") == 0
