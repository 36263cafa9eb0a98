"""`prism plugins`: every plugin, where it comes from, its hooks and any load error."""

from __future__ import annotations

import typer

from prism.cli.common import JsonOpt, emit_json, project_dir_for_plugins, stderr_console


def register(app: typer.Typer) -> None:
    @app.command("plugins")
    def plugins(json_: JsonOpt = False) -> None:
        """List plugins (built-in, installed distributions, local plugins/*.py) and their errors."""
        from prism.plugins import get_manager

        manager = get_manager(project_dir_for_plugins())
        rows = []
        for info in manager.infos.values():
            provided = {kind: [e.id for e in manager.registry(kind) if e.provider == info.provider]
                        for kind in ("method", "backbone", "benchmark", "metric")}
            rows.append({"name": info.name, "provider": info.provider, "hooks": info.hooks,
                         "provides": {k: v for k, v in provided.items() if v}, "errors": info.errors,
                         "ok": info.ok})
        if json_:
            emit_json(rows)
            return
        from rich.table import Table

        table = Table(title="plugins", title_justify="left")
        for column in ("name", "provider", "provides", "status"):
            table.add_column(column)
        for row in rows:
            provides = "; ".join(f"{k}s: {', '.join(v)}" for k, v in row["provides"].items())
            status = "[green]ok[/]" if row["ok"] else "[red]" + " | ".join(row["errors"]) + "[/]"
            table.add_row(row["name"], row["provider"], provides, status)
        stderr_console().print(table)
