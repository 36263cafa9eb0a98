"""Help text that prints as written.

typer renders every help string as rich markup, so a table name such as
``[distributed]`` would be taken for a style tag and vanish from ``--help``.
Every option, argument, command and group help of the core commands passes
through :func:`literal` (via :func:`option`, :func:`argument` and
:func:`command_help`), so help strings are written plainly, brackets and all.
A docstring's final "Examples:" section becomes the command's epilog: one
command line per line, below the options.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any

import typer

#: what rich takes for a markup tag (rich.markup's own pattern; importing rich on every completion
#: keystroke only to escape would cost more than this line)
_TAG = re.compile(r"(\\*)(\[[a-z#/@][^[]*?])")
#: where a help text's example command lines start
EXAMPLES = "\n\nExamples:\n"


def literal(text: str) -> str:
    """``text`` escaped so that rich markup prints it unchanged (what rich.markup.escape does)."""
    return _TAG.sub(lambda m: m.group(1) * 2 + "\\" + m.group(2), text)


def option(*names: str, help: str, **kwargs: Any) -> Any:
    """``typer.Option`` whose help prints literally."""
    return typer.Option(*names, help=literal(help), **kwargs)


def argument(*, help: str, **kwargs: Any) -> Any:
    """``typer.Argument`` whose help prints literally."""
    return typer.Argument(help=literal(help), **kwargs)


def command_help(function: Callable[..., Any] | str) -> tuple[str, str | None]:
    """A command's (help, epilog) from its docstring (or a string), printed literally.

    The first paragraph is the one-line summary in the parent's command list, so it is
    joined onto one line. A final "Examples:" section becomes the epilog, shown below the
    options, one command line per line.
    """
    text = function if isinstance(function, str) else inspect.getdoc(function) or ""
    text, _, examples = inspect.cleandoc(text).partition(EXAMPLES)
    first, sep, rest = text.strip().partition("\n\n")
    help_ = literal(" ".join(first.split()) + sep + rest)
    # typer dedents the epilog from its second line on: the leading newline makes "Examples:" that
    # line, so the command lines below it keep their indent
    return help_, literal("\n" + EXAMPLES.strip() + "\n" + examples.rstrip()) if examples.strip() else None


def add_command(app: typer.Typer, name: str, function: Callable[..., Any], **kwargs: Any) -> None:
    """Register a module-level command function under ``name``, its docstring as help."""
    help_, epilog = command_help(function)
    app.command(name, help=help_, epilog=epilog, **kwargs)(function)


def group(help: str, **kwargs: Any) -> typer.Typer:
    """A command group whose help (summary, then an "Examples:" section) prints literally."""
    help_, epilog = command_help(help)
    return typer.Typer(help=help_, epilog=epilog, **kwargs)
