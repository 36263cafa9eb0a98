"""Atomic checkpoint writes: a failure or a kill never leaves a half-written checkpoint."""

from __future__ import annotations

import json

import pytest

from prism.checkpoint import store


def _fill(files: dict[str, str]):
    def fill(tmp):
        for name, text in files.items():
            (tmp / name).write_text(text)
        store.write_json_atomic(tmp / store.STATE_JSON, {"tasks_seen": ["a"], "config_hash": "h"})
    return fill


def test_write_and_verify(tmp_path):
    final = tmp_path / "ckpts" / "Task0_llava"
    store.write_checkpoint(final, _fill({"adapter_model.safetensors": "weights"}))
    assert store.checkpoint_complete(final)
    assert store.verify_checkpoint(final) == []
    manifest = json.loads((final / store.MANIFEST).read_text())
    assert set(manifest["files"]) == {"adapter_model.safetensors", store.STATE_JSON}


def test_corruption_detected(tmp_path):
    final = tmp_path / "Task0_llava"
    store.write_checkpoint(final, _fill({"adapter_model.safetensors": "weights"}))
    (final / "adapter_model.safetensors").write_text("weightz")
    problems = store.verify_checkpoint(final)
    assert problems and "sha256" in problems[0]


def test_failure_during_fill_keeps_previous(tmp_path):
    final = tmp_path / "Task0_llava"
    store.write_checkpoint(final, _fill({"adapter_model.safetensors": "v1"}))

    def broken(tmp):
        (tmp / "adapter_model.safetensors").write_text("v2-partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        store.write_checkpoint(final, broken)
    assert (final / "adapter_model.safetensors").read_text() == "v1"
    assert store.verify_checkpoint(final) == []
    assert [p.name for p in tmp_path.iterdir()] == ["Task0_llava"]


def test_recover_after_kill_between_renames(tmp_path):
    final = tmp_path / "Task0_llava"
    store.write_checkpoint(final, _fill({"x": "v1"}))
    old = tmp_path / ".Task0_llava.old-1-2"
    final.rename(old)  # the state a kill leaves between the two renames
    (tmp_path / ".Task0_llava.tmp-1-3").mkdir()
    store.recover_interrupted(tmp_path)
    assert store.verify_checkpoint(final) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Task0_llava"]


def test_incomplete_folder_is_not_complete(tmp_path):
    folder = tmp_path / "Task1_llava"
    folder.mkdir()
    (folder / "adapter_model.safetensors").write_text("x")
    assert not store.checkpoint_complete(folder)
    assert "missing" in store.verify_checkpoint(folder)[0]
