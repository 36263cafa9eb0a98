"""Every `--help` shows example command lines that parse, and prints its bracketed table names
literally (rich markup would eat "[distributed]")."""

from __future__ import annotations

import importlib
import re
import shlex

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
    assert "Examples:" in out and "\n   prism train --" in out  # one command line per line


def _examples(command) -> list[list[str]]:
    """The `prism ...` command lines of a help's Examples section, as argument lists."""
    text = re.sub(r"\\(\[)", r"\1", command.epilog or "")
    found = []
    for line in text.partition("Examples:")[2].strip().splitlines():
        for segment in line.split("&&"):
            words = shlex.split(segment)
            while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):  # VAR=value prism ...
                words.pop(0)
            if words[:1] == ["prism"]:
                found.append(words[1:])
    return found


@pytest.mark.parametrize("path, command", CORE[1:], ids=[" ".join(path) for path, _ in CORE[1:]])
def test_every_bracketed_word_of_a_help_survives(path, command, capsys, monkeypatch, tmp_path):
    out = _help(list(path), capsys, monkeypatch, tmp_path)
    assert "\\[" not in out  # no escape shows
    for text in _source_help(command):
        for word in BRACKETED.findall(text):
            assert word in out, f"prism {' '.join(path)} --help lost {word}"


@pytest.mark.parametrize("path, command", CORE, ids=[" ".join(path) or "prism" for path, _ in CORE])
def test_every_help_shows_examples_that_parse(path, command, capsys, monkeypatch, tmp_path):
    if not path:  # the root's help is prism's app's, not the scratch app's
        from prism.cli.app import app

        command = get_command(app)
    out = _help(list(path), capsys, monkeypatch, tmp_path)
    assert "Examples:" in out, f"prism {' '.join(path)} --help shows no example"
    examples = _examples(command)
    assert examples and examples[0][:len(path)] == list(path)  # the first example runs this command
    for example in examples:  # every option named exists and gets its value; the command path too
        assert _help(example, capsys, monkeypatch, tmp_path), example
