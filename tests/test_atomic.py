"""The one atomic file writer: whole files only, and permissions like any other file (the umask's)."""

from __future__ import annotations

import json
import os
import stat

import pytest

from prism.atomic import write_file_atomic, write_json_atomic


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_files_get_the_umask_permissions(tmp_path, umask_022):
    text, data, js = tmp_path / "a.txt", tmp_path / "b.bin", tmp_path / "deep" / "c.json"
    write_file_atomic(text, "hello\n")
    write_file_atomic(data, b"\x00\x01")
    write_json_atomic(js, {"k": "ü"})
    assert {p.name: _mode(p) for p in (text, data, js)} == {"a.txt": 0o644, "b.bin": 0o644, "c.json": 0o644}


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_a_stricter_umask_is_respected(tmp_path):
    old = os.umask(0o077)
    try:
        write_file_atomic(tmp_path / "private.txt", "x")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "private.txt") == 0o600


def test_replaces_whole_files_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "file.json"
    write_json_atomic(target, {"a": 1})
    write_file_atomic(target, "replaced\n")
    assert target.read_text() == "replaced\n"
    write_json_atomic(target, {"path": tmp_path, "text": "ü"})  # str() for what JSON lacks, UTF-8 kept
    assert json.loads(target.read_text(encoding="utf-8")) == {"path": str(tmp_path), "text": "ü"}
    assert [p.name for p in tmp_path.iterdir()] == ["file.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "file.txt"
    write_file_atomic(target, "old")

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_file_atomic(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.txt"]


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_resolved_config_and_accuracy_matrix_are_readable_by_others(tmp_path, umask_022):
    from prism.config import load_config
    from prism.evaluation.matrix import AccuracyMatrix

    resolved = load_config(cwd=tmp_path, env={}, validate_method=False)
    config_file = resolved.save(tmp_path / "run")
    matrix = AccuracyMatrix(task_names=["a", "b"], cells=[[50.0, None], [40.0, 60.0]])
    matrix_file = matrix.save(tmp_path / "run" / "accuracy_matrix.json")
    assert _mode(config_file) == 0o644, oct(_mode(config_file))
    assert _mode(matrix_file) == 0o644, oct(_mode(matrix_file))
