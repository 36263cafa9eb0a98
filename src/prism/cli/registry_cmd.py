"""`prism benchmarks|backbones|metrics list`: what is registered, by whom (no torch import);
`prism backbones show ID`: what a backbone loads and what this machine can run with it.

Methods have their own group (`prism methods list|show`) because they also
have hyper-parameters to show.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import typer

from prism.cli.common import emit_json, project_dir_for_plugins, stderr_console
from prism.cli.completion import complete_backbone
from prism.cli.help_text import add_command, argument, group
from prism.cli.options import JsonOpt

#: kind -> help of its command group
GROUPS: dict[str, str] = {
    "benchmark": "Benchmarks (task sequences): built-in and installed plugins.\n\n"
                 "Examples:\n  prism benchmarks list\n  prism data check -b ucit",
    "backbone": "Backbones (model families): built-in and installed plugins.\n\n"
                "Examples:\n  prism backbones list\n  prism backbones show llava",
    "metric": "Per-task metrics: built-in and installed plugins.\n\n"
              "Examples:\n  prism metrics list\n  prism eval score predictions.jsonl --metric vqa_accuracy",
}
BackboneIdArg = Annotated[str, argument(help="Backbone id, e.g. llava.", autocompletion=complete_backbone)]


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


def list_benchmarks(json_: JsonOpt = False) -> None:
    """Every registered benchmark: id, summary and who provides it.

    Examples:
      prism benchmarks list
      prism benchmarks list --json
    """
    list_entries("benchmark", json_)


def list_backbones(json_: JsonOpt = False) -> None:
    """Every registered backbone: id, summary and who provides it.

    Examples:
      prism backbones list
      prism backbones list --json
    """
    list_entries("backbone", json_)


def list_metrics(json_: JsonOpt = False) -> None:
    """Every registered metric: id, summary and who provides it.

    Examples:
      prism metrics list
      prism metrics list --json
    """
    list_entries("metric", json_)


def show_backbone(backbone_id: BackboneIdArg, json_: JsonOpt = False) -> None:
    """What a backbone loads and accepts, its target-module presets, and the precisions and
    attention implementations this machine can use.

    Examples:
      prism backbones show llava
      prism backbones show internvl --json
    """
    from prism.backbones.describe import describe_backbone  # imports torch: only here

    info = describe_backbone(backbone_id, project_dir_for_plugins())
    if json_:
        emit_json(info)
    else:
        print_backbone(info)


def print_backbone(info: dict) -> None:
    """``prism backbones show`` as text on stderr."""
    from rich.markup import escape
    from rich.table import Table

    console = stderr_console()
    console.print(f"[bold]{escape(info['id'])}[/] — {escape(info['summary'])}  "
                  f"[dim]({escape(info['provider'])}, {escape(info['class'])})[/]")
    console.print(f"loads: {escape(info['loads'])}", highlight=False)
    if info["formats"]:
        console.print("[bold]" + escape("[backbone] model") + " accepts[/]")
        for line in info["formats"]:
            console.print(f"  - {escape(line)}", highlight=False)
    if info["builtin_models"]:
        shipped = ", ".join(f"{m['model']} ({m['vision_tower']} tower)" for m in info["builtin_models"])
        console.print(f"builtin LLaVA-class models: {escape(shipped)}", highlight=False)
    presets = Table(title=escape("target-module presets ([method.<id>] target_modules; or give a regex)"),
                    title_justify="left")
    presets.add_column("preset")
    presets.add_column("regex (re.fullmatch over module paths)", overflow="fold")  # copied by users: never cut
    for name, regex in info["target_presets"].items():
        presets.add_row(escape(name), escape(regex))
    console.print(presets)
    for title, columns, rows in (
        (f"precisions on {info['device']} ([backbone] train_precision, [infer] precision)",
         ("precision", "usable", "what it is / why not"),
         {m: (v["reason"], v["what"]) for m, v in info["precisions"].items()}),
        (f"attention on {info['device']} ([backbone] attn; auto = {info['attention_auto']})",
         ("attn", "usable", "why not"), {m: (v["reason"], "") for m, v in info["attention"].items()}),
    ):
        table = Table(title=escape(title), title_justify="left")
        for column in columns:
            table.add_column(column)
        for name, (reason, what) in rows.items():
            table.add_row(escape(name), "yes" if reason is None else "[red]no[/]", escape(reason or what))
        console.print(table)
    console.print(f"routing features: {escape(info['routing_tower'])}", highlight=False)


#: kind -> its group's commands, in the order `prism <kind>s --help` lists them
COMMANDS: dict[str, dict[str, Callable[..., None]]] = {
    "benchmark": {"list": list_benchmarks},
    "backbone": {"list": list_backbones, "show": show_backbone},
    "metric": {"list": list_metrics},
}


def register(app: typer.Typer) -> None:
    for kind, help_ in GROUPS.items():
        kind_group = group(help_, no_args_is_help=True)
        for name, function in COMMANDS[kind].items():
            add_command(kind_group, name, function)
        app.add_typer(kind_group, name=f"{kind}s")
