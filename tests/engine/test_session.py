"""Paths in prism.toml are relative to the file's folder, not to where prism was started."""

from __future__ import annotations

from prism.engine.session import _project_path


def test_relative_paths_resolve_against_the_project_folder(tmp_path):
    (tmp_path / "towers" / "clip").mkdir(parents=True)
    assert _project_path("towers/clip", tmp_path) == str(tmp_path / "towers" / "clip")
    assert _project_path("builtin:tiny-llava", tmp_path) == "builtin:tiny-llava"
    assert _project_path("openai/clip-vit-large-patch14-336", tmp_path) == "openai/clip-vit-large-patch14-336"
    assert _project_path(str(tmp_path / "abs"), tmp_path) == str(tmp_path / "abs")
    assert _project_path(None, tmp_path) is None
