"""`prism config show|validate`: the resolved configuration and where each value came from."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from prism.cli.common import emit_json, stderr_console
from prism.cli.help_text import add_command, group
from prism.cli.options import ConfigOpt, JsonOpt, SetOpt, ShowMethodOpt


def _load(config: Optional[Path], sets: Optional[list[str]], method: Optional[str]):
    """Full validation; if the method's plugin cannot load, still show the rest (with a warning)."""
    from prism.config import load_config
    from prism.errors import PluginError

    flags = {"method.id": method}
    try:
        return load_config(config, sets=sets, flags=flags)
    except PluginError as exc:
        stderr_console().print(f"[yellow]warning:[/] {exc.message}; method parameters not validated",
                               highlight=False)
        return load_config(config, sets=sets, flags=flags, validate_method=False)


def show(config: ConfigOpt = None, set_: SetOpt = None, method: ShowMethodOpt = None,
         json_: JsonOpt = False) -> None:
    """Print every resolved setting with its source (table on stderr, or --json on stdout).

    Examples:
      prism config show
      prism config show --method ewc --set train.lr=1e-4 --json
    """
    resolved = _load(config, set_, method)
    if json_:
        emit_json({
            "config": resolved.to_dict(),
            "sources": resolved.sources,
            "config_path": str(resolved.config_path) if resolved.config_path else None,
            "hash": resolved.hash(),
        })
        return
    _print_table(resolved)


def _print_table(resolved) -> None:
    from rich.table import Table
    from rich.text import Text

    from prism.config.toml_io import format_value

    where = str(resolved.config_path) if resolved.config_path else "no prism.toml (built-in defaults)"
    table = Table(title=Text(f"config: {where}"), title_justify="left", show_lines=False)
    table.add_column("key", no_wrap=True)
    table.add_column("value")
    table.add_column("source", style="dim", no_wrap=True)
    flat = _flatten(resolved.to_dict())
    for key, source in resolved.sources.items():
        value = flat.get(key)
        shown = Text("not set", style="dim italic") if value is None else Text(format_value(value))
        table.add_row(Text(key), shown, Text(source))
    console = stderr_console()
    console.print(table)
    console.print(f"hash: {resolved.hash()}", highlight=False)


def _flatten(data: dict, prefix: str = "") -> dict:
    flat: dict = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        flat[dotted] = value
        if isinstance(value, dict):
            flat.update(_flatten(value, dotted + "."))
    return flat


def validate(config: ConfigOpt = None, set_: SetOpt = None, method: ShowMethodOpt = None,
             json_: JsonOpt = False) -> None:
    """Check everything `prism train` checks before it starts; exit 2 listing every problem.

    The schema and the method's parameters; registered backbone, benchmark and method ids;
    [benchmark] tasks and [train.overrides."<task>"] against the benchmark's tasks; [train]
    report_to trackers; the target_modules regex; local model and routing-tower folders and
    the data folder. Hub ids are not downloaded (listed as not checked).

    Examples:
      prism config validate
      prism config validate -c experiments/prism.toml --method ewc
    """
    from prism.config import load_config

    resolved = load_config(config, sets=set_, flags={"method.id": method}, check_run=True)
    where = str(resolved.config_path) if resolved.config_path else "(no prism.toml: built-in defaults)"
    if json_:
        emit_json({"ok": True, "config_path": where if resolved.config_path else None,
                   "hash": resolved.hash(), "not_checked": list(resolved.unchecked)})
        return
    typer.echo(f"ok: {where}", err=True)
    for note in resolved.unchecked:
        typer.echo(f"  not checked: {note}", err=True)


def register(app: typer.Typer) -> None:
    config = group("Show or validate the resolved configuration (prism.toml + env + --set + flags).\n\n"
                   "Examples:\n  prism config show\n  prism config validate --method ewc", no_args_is_help=True)
    add_command(config, "show", show)
    add_command(config, "validate", validate)
    app.add_typer(config, name="config")
