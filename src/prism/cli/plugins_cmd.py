"""`prism plugins`: every plugin, its distribution and version, its hooks and any load error."""

from __future__ import annotations

import typer

from prism.cli.common import emit_json, project_dir_for_plugins, stderr_console
from prism.cli.help_text import add_command
from prism.cli.options import JsonOpt


def plugin_rows() -> list[dict]:
    """One row per plugin, what it registered included (the data behind `prism plugins`)."""
    from prism.plugins import get_manager

    manager = get_manager(project_dir_for_plugins())
    return [{**info.to_dict(), "provides": manager.provided_by(info)} for info in manager.infos.values()]


def plugins(json_: JsonOpt = False) -> None:
    """List plugins (built-in, installed distributions, local plugins/*.py), their hooks and errors.

    PRISM_LOAD_PLUGINS / PRISM_DISABLED_PLUGINS / [plugins] disable choose which load;
    PRISM_TRACE_PLUGINS=1 traces every load and hook call on stderr.

    Examples:
      prism plugins
      PRISM_TRACE_PLUGINS=1 prism plugins --json
    """
    rows = plugin_rows()
    if json_:
        emit_json(rows)
        return
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="plugins", title_justify="left")
    for column in ("name", "distribution", "version", "hooks", "provides", "status"):
        table.add_column(column)
    for row in rows:
        provides = "; ".join(f"{k}s: {', '.join(v)}" for k, v in row["provides"].items())
        hooks = ", ".join(h.removeprefix("register_") for h in row["hooks"])
        if row["errors"]:
            status = "[red]" + escape(" | ".join(row["errors"])) + "[/]"
        elif row["disabled"]:
            status = "[yellow]" + escape(row["disabled"]) + "[/]"
        else:
            status = "[green]ok[/]"
        distribution = escape(row["distribution"] or row["provider"])
        table.add_row(escape(row["name"]), distribution, row["version"] or "", hooks, escape(provides), status)
    stderr_console().print(table)


def register(app: typer.Typer) -> None:
    add_command(app, "plugins", plugins)
