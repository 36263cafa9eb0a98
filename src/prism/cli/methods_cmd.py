"""`prism methods list|show`: what continual-learning methods are installed (no torch import)."""

from __future__ import annotations

from typing import Annotated

import typer

from prism.cli.common import emit_json, project_dir_for_plugins, stderr_console
from prism.cli.completion import complete_method
from prism.cli.help_text import add_command, argument, group
from prism.cli.options import JsonOpt

MethodIdArg = Annotated[str, argument(help="Method id, e.g. ft_lora.", autocompletion=complete_method)]


def list_(json_: JsonOpt = False) -> None:
    """Every registered method: id, summary and who provides it.

    Examples:
      prism methods list
      prism methods list --json
    """
    from prism.plugins import registry

    entries = list(registry("method", project_dir_for_plugins()))
    if json_:
        emit_json([{"id": e.id, "summary": e.summary, "provider": e.provider} for e in entries])
        return
    from rich.table import Table

    table = Table(title="methods", title_justify="left")
    for column in ("id", "summary", "provider"):
        table.add_column(column)
    for e in entries:
        table.add_row(e.id, e.summary, e.provider)
    stderr_console().print(table)


def show(method_id: MethodIdArg, json_: JsonOpt = False) -> None:
    """A method's hyper-parameters: defaults, types and meaning.

    Examples:
      prism methods show ewc
      prism methods show olora --json
    """
    from prism.plugins import registry

    entry = registry("method", project_dir_for_plugins()).entry(method_id)
    cls = entry.load()
    fields = []
    for name, field in cls.Params.model_fields.items():
        default = field.default if not field.is_required() else None
        fields.append({"name": name, "type": _type_name(field.annotation), "default": default,
                       "required": field.is_required(), "description": field.description or ""})
    info = {"id": entry.id, "summary": entry.summary, "provider": entry.provider,
            "class": entry.target if isinstance(entry.target, str) else repr(entry.target),
            "doc": (cls.__doc__ or "").strip(), "params_doc": (cls.Params.__doc__ or "").strip(),
            "params": fields, "trains": bool(getattr(cls, "trains", True)),
            "config_defaults": getattr(cls, "config_defaults", {})}
    if json_:
        emit_json(info)
        return
    import inspect

    from rich.markup import escape
    from rich.table import Table

    console = stderr_console()  # texts are escaped: "[train] lr" is a TOML table, not rich markup
    console.print(f"[bold]{escape(entry.id)}[/] — {escape(entry.summary)}  "
                  f"[dim]({escape(entry.provider)}, {escape(info['class'])})[/]")
    if info["params_doc"]:
        console.print(escape(" ".join(inspect.cleandoc(info["params_doc"]).split())), highlight=False)
    table = Table(title=escape(f"[method.{entry.id}] parameters"), title_justify="left")
    for column in ("name", "type", "default", "meaning"):
        table.add_column(column)
    for f in fields:
        table.add_row(escape(f["name"]), escape(f["type"]),
                      "required" if f["required"] else escape(repr(f["default"])), escape(f["description"]))
    console.print(table)
    if info["config_defaults"]:
        console.print(escape(f"config defaults this method sets: {info['config_defaults']}"))


def register(app: typer.Typer) -> None:
    methods = group("Continual-learning methods: built-in and installed plugins.\n\n"
                    "Examples:\n  prism methods list\n  prism methods show ewc", no_args_is_help=True)
    add_command(methods, "list", list_)
    add_command(methods, "show", show)
    app.add_typer(methods, name="methods")


def _type_name(annotation) -> str:
    name = getattr(annotation, "__name__", None)
    return name if name else str(annotation).replace("typing.", "")
