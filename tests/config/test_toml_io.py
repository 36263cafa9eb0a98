"""The small TOML writer, value parsing for env/--set, line finding and atomic writes."""

from __future__ import annotations

import math
import tomllib

import pytest

from prism.config.toml_io import KeyLines, atomic_write_text, dumps, format_value, parse_value


@pytest.mark.parametrize("raw, expected", [
    ("1e-4", 1e-4),
    ("3", 3),
    ("true", True),
    ("false", False),
    ('"quoted"', "quoted"),
    ("plain words", "plain words"),
    ("abc", "abc"),
    ("0-4", "0-4"),
    ("0,2,3", "0,2,3"),
    ("[0, 2]", [0, 2]),
    ('["a", 1]', ["a", 1]),
    ("{ a = 1 }", {"a": 1}),
    ("none", None),
    ("NULL", None),
    ("2024-01-01", "2024-01-01"),
    ("1\nother = 2", "1\nother = 2"),
    ("", ""),
])
def test_parse_value(raw, expected):
    assert parse_value(raw) == expected


@pytest.mark.parametrize("value", [
    "", "plain", 'quote " and \\ backslash', "tab\tnewline\nreturn\r", "ünïcødé ✓", "\x01control\x7f",
    0, -5, 2**40, 0.0, 1e-7, 2e-3, 1e16, -3.5, True, False, [], [1, 2], ["a", 1, 2.5], [[1], ["x"]],
    {"a": 1, "b c": [1]}, [{"x": 1}], float("inf"), float("-inf"),
])
def test_format_value_round_trips(value):
    assert tomllib.loads(f"v = {format_value(value)}")["v"] == value


def test_nan():
    assert math.isnan(tomllib.loads(f"v = {format_value(float('nan'))}")["v"])


def test_dumps_tables_and_none():
    document = {"top": 1, "a": {"x": "y", "none": None, "sub": {"k": [1, 2]}, "after": True},
                "odd key": {"1.5": 2}}
    text = dumps(document, header="line one\nline two")
    assert text.startswith("# line one\n# line two\n")
    assert "# none is not set" in text
    parsed = tomllib.loads(text)
    assert parsed == {"top": 1, "a": {"x": "y", "sub": {"k": [1, 2]}, "after": True}, "odd key": {"1.5": 2}}


def test_dumps_rejects_unknown_types():
    with pytest.raises(TypeError):
        dumps({"a": {"b": object()}})


def test_key_lines():
    lines = KeyLines(
        "# comment with key = 1\n"
        "top = 1\n"
        "[train]\n"
        "  lr = 1e-3   # inline\n"
        "# max_steps = 5\n"
        "[method.ft_lora]\n"
        'r = 8\n'
        '"quoted.key" = 1\n'
        "dotted.inner = 2\n"
    )
    assert lines.find(("top",)) == 2
    assert lines.find(("train",)) == 3
    assert lines.find(("train", "lr")) == 4
    assert lines.find(("train", "max_steps")) == 3  # commented out: falls back to the table
    assert lines.find(("method", "ft_lora", "r")) == 7
    assert lines.find(("method", "ft_lora", "quoted.key")) == 8
    assert lines.find(("method", "ft_lora", "dotted", "inner")) == 9
    assert lines.find(("method",)) is None
    assert lines.find(("infer", "x")) is None


def test_atomic_write(tmp_path):
    target = tmp_path / "deep" / "file.toml"
    atomic_write_text(target, "a = 1\n")
    atomic_write_text(target, "a = 2\n")
    assert target.read_text() == "a = 2\n"
    assert [p.name for p in target.parent.iterdir()] == ["file.toml"]
