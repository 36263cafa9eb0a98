"""The `prism` typer application and its error handling.

Importing this module must stay cheap: no torch, no transformers (shell
completion and `prism --help` run it). Commands import heavy libraries inside
their function bodies.
"""

from __future__ import annotations

import os
import sys

import typer

from prism import __version__
from prism.cli.help_text import command_help
from prism.errors import PrismError

_HELP, _EPILOG = command_help(
    "Multimodal continual instruction tuning: train a vision-language model on a sequence "
    "of tasks with a continual-learning method, and get the full accuracy matrix.\n\n"
    "Examples:\n  prism init demo && cd demo && prism train\n  prism eval compare ft_lora ewc")
app = typer.Typer(
    name="prism",
    help=_HELP,
    epilog=_EPILOG,
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

#: Command modules, in the order they appear in `prism --help`. Each defines register(app).
COMMAND_MODULES = (
    "prism.cli.train_cmd",
    "prism.cli.infer_cmd",
    "prism.cli.eval_cmd",
    "prism.cli.ckpt_cmd",
    "prism.cli.data_cmd",
    "prism.cli.methods_cmd",
    "prism.cli.registry_cmd",
    "prism.cli.config_cmd",
    "prism.cli.plugins_cmd",
    "prism.cli.init_cmd",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"prism {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """prism — multimodal continual instruction tuning."""


def _core_command_names() -> set[str]:
    names = {c.name or (c.callback.__name__ if c.callback else "") for c in app.registered_commands}
    names |= {g.name or (g.typer_instance.info.name if g.typer_instance else "") for g in app.registered_groups}
    return {n for n in names if n}


def build_app() -> typer.Typer:
    """Register core commands, then let plugins add theirs (never shadowing a core one)."""
    if getattr(app, "_prism_built", False):
        return app
    import importlib

    for name in COMMAND_MODULES:
        importlib.import_module(name).register(app)
    core = _core_command_names()
    try:
        from prism.cli.common import project_dir_for_plugins
        from prism.plugins import get_manager

        get_manager(project_dir_for_plugins()).add_commands(app, core)
    except PrismError:
        pass  # broken plugins are reported by `prism plugins`; core commands still work
    app._prism_built = True  # type: ignore[attr-defined]
    return app


def report_error(exc: BaseException) -> int:
    """Print one actionable message to stderr and return the exit code."""
    from rich.console import Console
    from rich.markup import escape

    console = Console(stderr=True, emoji=False)
    if isinstance(exc, PrismError):
        console.print(f"[bold red]error:[/] {escape(exc.message)}", highlight=False)
        if exc.hint:
            console.print(f"  [dim]hint:[/] {escape(exc.hint)}", highlight=False)
        return exc.exit_code
    console.print(f"[bold red]error:[/] {escape(type(exc).__name__ + ': ' + str(exc))}", highlight=False)
    console.print("  [dim]hint:[/] set PRISM_DEBUG=1 to see the traceback", highlight=False)
    return 1


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    debug = os.environ.get("PRISM_DEBUG", "") not in ("", "0")
    from prism.cli import common

    common.INVOCATION[:] = list(sys.argv[1:] if argv is None else argv)
    try:
        # Plugins load here: Ctrl-C or a strict-mode plugin error must get the same handling
        # as one raised by a command (no traceback unless PRISM_DEBUG=1).
        result = build_app()(args=argv, prog_name="prism", standalone_mode=False)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as exc:  # noqa: BLE001 - the one place that turns errors into exit codes
        if debug:
            raise
        code = _usage_exit_code(exc)
        if code is not None:
            sys.exit(code)
        sys.exit(report_error(exc))
    sys.exit(result if isinstance(result, int) else 0)


def _usage_exit_code(exc: Exception) -> int | None:
    """typer's own usage errors (bad option, missing argument): show them as usual, exit 2."""
    if type(exc).__name__ == "Abort":  # click's Ctrl-C at a prompt
        sys.stderr.write("aborted\n")
        return 130
    show = getattr(exc, "show", None)
    exit_code = getattr(exc, "exit_code", None)
    if callable(show) and isinstance(exit_code, int) and not isinstance(exc, PrismError):
        show()
        return exit_code
    return None
