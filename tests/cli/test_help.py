"""Every `--help` prints its bracketed table names literally (rich markup would eat "[distributed]")."""

from __future__ import annotations

import importlib
import re

import pytest
import typer
from typer.main import get_command

from prism.cli.app import COMMAND_MODULES, main

#: a bracketed word in a help string: a table name ([distributed], [train.overrides."<task>"]) or a list
BRACKETED = re.compile(r"\[[^\[\]\s]+\]")


def _core_commands() -> list[tuple[tuple[str, ...], object]]:
    """(path, click command) of every core command, group and subcommand, the root included.

    The core modules register into a scratch app, so commands a plugin added to prism's app
    (in another test of the session) are not walked.
    """
    scratch = typer.Typer()
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(scratch)
    found: list[tuple[tuple[str, ...], object]] = []

    def walk(command, path: tuple[str, ...]) -> None:
        found.append((path, command))
        for sub_name, sub in sorted(getattr(command, "commands", {}).items()):
            walk(sub, (*path, sub_name))

    walk(get_command(scratch), ())
    return found


CORE = _core_commands()


def _help(args: list[str], capsys, monkeypatch, tmp_path) -> str:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as info:
        main([*args, "--help"])
    out, err = capsys.readouterr()
    assert info.value.code in (0, None), err
    return out


def _source_help(command) -> list[str]:
    """The help strings as written in the source (help_text.literal's escapes undone)."""
    texts = [command.help or "", command.epilog or ""]
    texts += [getattr(param, "help", None) or "" for param in command.params]
    return [re.sub(r"\\(\[)", r"\1", text) for text in texts]


def test_train_help_prints_table_names_literally(capsys, monkeypatch, tmp_path):
    out = _help(["train"], capsys, monkeypatch, tmp_path)
    assert "[distributed] nproc" in out and "[distributed] gpus" in out
    assert "[backbone] train_precision" in out
    assert "( nproc)" not in out and "\\[" not in out


@pytest.mark.parametrize("path, command", CORE[1:], ids=[" ".join(path) for path, _ in CORE[1:]])
def test_every_bracketed_word_of_a_help_survives(path, command, capsys, monkeypatch, tmp_path):
    out = _help(list(path), capsys, monkeypatch, tmp_path)
    assert "\\[" not in out  # no escape shows
    for text in _source_help(command):
        for word in BRACKETED.findall(text):
            assert word in out, f"prism {' '.join(path)} --help lost {word}"
