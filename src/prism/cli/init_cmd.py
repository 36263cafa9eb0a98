"""`prism init`: write the annotated prism.toml that runs the laptop demo."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from prism.cli.common import CONFIG_FILE_NAME, stderr_console
from prism.cli.help_text import add_command, argument, option

DirArg = Annotated[
    Path,
    argument(help="Project folder to write prism.toml into (created if missing).",
             show_default="the current folder"),
]
ForceOpt = Annotated[bool, option("--force", "-f", help="Overwrite an existing prism.toml.")]


def init(directory: DirArg = Path("."), force: ForceOpt = False) -> None:
    """Write an annotated prism.toml (the CPU demo: tiny LLaVA, synthetic benchmark, LoRA).

    Examples:
      prism init demo
      prism init --force
    """
    from prism.config.template import default_toml_text
    from prism.config.toml_io import atomic_write_text
    from prism.errors import UsageError

    target = directory / CONFIG_FILE_NAME
    if target.exists() and not force:
        raise UsageError(f"{target} already exists", hint="pass --force to overwrite it")
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"{directory} is not a folder")
    atomic_write_text(target, default_toml_text())

    console = stderr_console()
    console.print(f"wrote {target}", highlight=False)
    steps = []
    if directory.resolve() != Path.cwd().resolve():
        steps.append(f"cd {directory}")
    steps += [
        "prism config show      # every setting and where it comes from",
        "prism train            # learn the tasks in order, evaluating after each",
        "prism eval             # accuracy matrix, MFN/MFT/MAA/BWT, report",
    ]
    console.print("next steps:\n" + "\n".join(f"  {step}" for step in steps), highlight=False, markup=False)


def register(app: typer.Typer) -> None:
    add_command(app, "init", init)
