"""The one JSON file reader: what it reports, and that callers choose the exception."""

from __future__ import annotations

import pytest

from prism.jsonfile import JsonFileError, read_json


@pytest.mark.parametrize("content, kind", [
    (None, "missing"), (b"\xff\xfe", "not_utf8"), (b"{,}", "not_json"), (b"[1]", "not_object"),
])
def test_problems(tmp_path, content, kind):
    path = tmp_path / "f.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(JsonFileError) as caught:
        read_json(path, want_object=True)
    assert caught.value.problem.kind == kind and str(caught.value).startswith(str(path))
    assert caught.value.__cause__ is None and caught.value.__context__ is None


def test_values_and_caller_errors(tmp_path):
    path = tmp_path / "f.json"
    path.write_text('[1, "ü"]', encoding="utf-8")
    assert read_json(path) == [1, "ü"]
    with pytest.raises(KeyError, match="list"):
        read_json(path, want_object=True, error=lambda problem: KeyError(problem.found))
    with pytest.raises(OSError, match="missing"):  # a folder is no file
        read_json(tmp_path, error=lambda problem: OSError(problem.kind))
