"""`prism infer`: predictions and the accuracy matrix from saved checkpoints."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from prism.cli.common import ConfigOpt, JsonOpt, SetOpt, emit_json, stderr_console
from prism.cli.completion import complete_checkpoint
from prism.cli.train_cmd import BackboneOpt, BenchmarkOpt, MethodOpt, ModelOpt, OutputOpt, TasksOpt, run_flags


def register(app: typer.Typer) -> None:
    @app.command("infer")
    def infer(
        ckpt: Annotated[Optional[list[str]], typer.Option("--ckpt", help="Only these checkpoints "
                        "(e.g. Task2_llava); default: every complete checkpoint of the run.",
                        autocompletion=complete_checkpoint)] = None,
        tasks: TasksOpt = None, method: MethodOpt = None, backbone: BackboneOpt = None, model: ModelOpt = None,
        benchmark: BenchmarkOpt = None, output_dir: OutputOpt = None, config: ConfigOpt = None, set_: SetOpt = None, json_: JsonOpt = False,
    ) -> None:
        """Load the base model once, swap in each checkpoint's adapters, and predict every task it has seen."""
        from prism.cli.progress import RichReporter
        from prism.cli.results import print_matrix, result_json
        from prism.config import load_config
        from prism.engine.infer import infer as run_infer

        resolved = load_config(config, sets=set_ or [], flags=run_flags(tasks, method, backbone, model, benchmark,
                                                                          output_dir, None))
        console = stderr_console()
        reporter = RichReporter(console)
        try:
            layout, matrix, summary = run_infer(resolved, only=ckpt, reporter=reporter)
        finally:
            reporter.close()
        print_matrix(console, matrix, summary, title=f"{layout.method} on {layout.benchmark}")
        if json_:
            emit_json(result_json(layout, matrix, summary))
