"""`prism benchmarks|backbones|metrics list`: what is registered, by whom (no torch import).

Methods have their own group (`prism methods list|show`) because they also
have hyper-parameters to show.
"""

from __future__ import annotations

import typer

from prism.cli.common import JsonOpt, emit_json, project_dir_for_plugins, stderr_console

#: kind -> help of its command group
GROUPS: dict[str, str] = {
    "benchmark": "Benchmarks (task sequences): built-in and installed plugins.",
    "backbone": "Backbones (model families): built-in and installed plugins.",
    "metric": "Per-task metrics: built-in and installed plugins.",
}


def list_entries(kind: str, json_: bool) -> None:
    """Print one registry as a table on stderr, or as JSON on stdout."""
    from prism.plugins import registry

    entries = list(registry(kind, project_dir_for_plugins()))
    if json_:
        emit_json([{"id": e.id, "summary": e.summary, "provider": e.provider} for e in entries])
        return
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"{kind}s", title_justify="left")
    for column in ("id", "summary", "provider"):
        table.add_column(column)
    for e in entries:
        table.add_row(escape(e.id), escape(e.summary), escape(e.provider))
    stderr_console().print(table)


def _group(kind: str) -> typer.Typer:
    group = typer.Typer(help=GROUPS[kind], no_args_is_help=True)

    @group.command("list", help=f"Every registered {kind}: id, summary and who provides it.")
    def list_(json_: JsonOpt = False) -> None:
        list_entries(kind, json_)

    return group


def register(app: typer.Typer) -> None:
    for kind in GROUPS:
        app.add_typer(_group(kind), name=f"{kind}s")
