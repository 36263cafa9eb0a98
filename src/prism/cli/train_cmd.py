"""`prism train`: learn the configured task sequence, evaluating after each task."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from prism.cli.common import ConfigOpt, JsonOpt, SetOpt, emit_json, stderr_console
from prism.cli.completion import (complete_backbone, complete_benchmark, complete_method, complete_precision,
                                  complete_tasks)

TasksOpt = Annotated[Optional[str], typer.Option("--tasks", "-t", help="Tasks to run, by index or "
                     "name: '0-4', '0,2,3', 'colour,count'. Default: all tasks of the benchmark.",
                     autocompletion=complete_tasks)]
MethodOpt = Annotated[Optional[str], typer.Option("--method", "-m", help="Method id (`prism methods list`).",
                                                autocompletion=complete_method)]
BackboneOpt = Annotated[Optional[str], typer.Option("--backbone", help="Backbone id (e.g. llava).",
                                                  autocompletion=complete_backbone)]
ModelOpt = Annotated[Optional[str], typer.Option("--model", help="Model path or hub id, or builtin:tiny-llava.")]
BenchmarkOpt = Annotated[Optional[str], typer.Option("--benchmark", "-b", help="Benchmark id (e.g. synthetic, ucit).",
                                                      autocompletion=complete_benchmark)]
OutputOpt = Annotated[Optional[str], typer.Option("--output-dir", "-o", help="Folder for checkpoints, predictions and results.")]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help="Seed for data order, adapter init and dropout.")]
TrainPrecisionOpt = Annotated[Optional[str], typer.Option(
    "--train-precision", help="How to load and train the model (\\[backbone] train_precision): fp32, bf16, fp16, "
    "8bit or 4bit (bitsandbytes, QLoRA-style). Evaluation after each task uses the same model.",
    autocompletion=complete_precision, show_default=False)]


def run_flags(tasks=None, method=None, backbone=None, model=None, benchmark=None, output_dir=None, seed=None) -> dict:
    """Dedicated flags as dotted config keys (None = not given)."""
    return {"benchmark.tasks": tasks, "method.id": method, "backbone.id": backbone, "backbone.model": model,
            "benchmark.id": benchmark, "project.output_dir": output_dir, "project.seed": seed}


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train(
        tasks: TasksOpt = None, method: MethodOpt = None, backbone: BackboneOpt = None, model: ModelOpt = None,
        benchmark: BenchmarkOpt = None, output_dir: OutputOpt = None, seed: SeedOpt = None,
        train_precision: TrainPrecisionOpt = None, config: ConfigOpt = None, set_: SetOpt = None,
        restart: Annotated[bool, typer.Option("--restart", help="Discard this run's checkpoints, "
                                              "predictions and results and train from the first task.")] = False,
        json_: JsonOpt = False,
        nproc: Annotated[Optional[int], typer.Option(
            "--nproc", min=1, help="Training processes ([distributed] nproc); more than 1 relaunches "
            "this command under torchrun.", show_default=False)] = None,
        gpus: Annotated[Optional[str], typer.Option(
            "--gpus", help="GPU ids to train on, e.g. 0,1,2,3 ([distributed] gpus; one process each).",
            show_default=False)] = None,
    ) -> None:
        """Train task by task; after each task evaluate every task seen so far (the accuracy matrix)."""
        from prism.cli.common import INVOCATION
        from prism.cli.progress import RichReporter
        from prism.cli.results import print_matrix, result_json
        from prism.config import load_config
        from prism.engine import launch
        from prism.engine.loop import train as run_training
        from prism.engine.session import check_before_launch

        flags = run_flags(tasks, method, backbone, model, benchmark, output_dir, seed)
        flags.update({"backbone.train_precision": train_precision, "distributed.nproc": nproc,
                      "distributed.gpus": gpus})
        # every problem `prism config validate` reports, at once, before anything loads
        resolved = load_config(config, sets=set_ or [], flags=flags, check_run=True)
        console = stderr_console()
        cfg = resolved.config
        if launch.should_relaunch(cfg.distributed):
            check_before_launch(resolved)  # before torchrun starts and the launch record is written
            console.print(f"prism train: relaunching on {cfg.distributed.processes} "
                          f"process{'es' if cfg.distributed.processes > 1 else ''} "
                          f"({cfg.distributed.backend}) under torchrun")
            raise typer.Exit(launch.relaunch(cfg.distributed, INVOCATION, resolved.project_dir,
                                             launch.record_dir(resolved), sources=resolved.sources))
        if not launch.is_main_process():
            run_training(resolved, restart=restart)  # rank > 0: trains its shard, prints nothing
            return
        console.print(f"prism train: method [bold]{cfg.method.id}[/], backbone {cfg.backbone.id} "
                      f"({cfg.backbone.model}), benchmark {cfg.benchmark.id}, output {resolved.output_dir}")
        reporter = RichReporter(console)
        try:
            outcome = run_training(resolved, restart=restart, reporter=reporter)
        finally:
            reporter.close()
        print_matrix(console, outcome.matrix, outcome.summary, title=f"{cfg.method.id} on {cfg.benchmark.id}")
        console.print(f"results: {outcome.layout.results_dir}")
        if json_:
            emit_json(result_json(outcome.layout, outcome.matrix, outcome.summary))
