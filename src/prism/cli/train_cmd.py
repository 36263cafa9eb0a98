"""`prism train`: learn the configured task sequence, evaluating after each task."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from prism.cli.common import emit_json, stderr_console
from prism.cli.help_text import add_command, option
from prism.cli.options import (BackboneOpt, BenchmarkOpt, ConfigOpt, JsonOpt, MethodOpt, ModelOpt, OutputOpt,
                               SeedOpt, SetOpt, TasksOpt, TrainPrecisionOpt, choice_value, run_flags)

RestartOpt = Annotated[bool, option("--restart", help="Discard this run's checkpoints, "
                                    "predictions and results and train from the first task.")]
NprocOpt = Annotated[Optional[int], option(
    "--nproc", min=1, help="Training processes ([distributed] nproc); more than 1 relaunches "
    "this command under torchrun.", show_default=False)]
GpusOpt = Annotated[Optional[str], option(
    "--gpus", help="GPU ids to train on, e.g. 0,1,2,3 ([distributed] gpus; one process each).",
    show_default=False)]
NnodesOpt = Annotated[Optional[int], option(
    "--nnodes", min=1, help="Machines taking part ([distributed] nnodes); run the same command on each, "
    "with its own --node-rank and node 0's --master-addr.", show_default=False)]
NodeRankOpt = Annotated[Optional[int], option(
    "--node-rank", min=0, help="This machine's index, 0 .. nnodes-1 ([distributed] node_rank).", show_default=False)]
MasterAddrOpt = Annotated[Optional[str], option(
    "--master-addr", help="Node 0's host name or IP ([distributed] master_addr).", show_default=False)]
MasterPortOpt = Annotated[Optional[int], option(
    "--master-port", min=1, max=65535, help="Rendezvous port, the same on every node ([distributed] master_port).",
    show_default=False)]


def train(
    tasks: TasksOpt = None, method: MethodOpt = None, backbone: BackboneOpt = None, model: ModelOpt = None,
    benchmark: BenchmarkOpt = None, output_dir: OutputOpt = None, seed: SeedOpt = None,
    train_precision: TrainPrecisionOpt = None, config: ConfigOpt = None, set_: SetOpt = None,
    restart: RestartOpt = False, json_: JsonOpt = False, nproc: NprocOpt = None, gpus: GpusOpt = None,
    nnodes: NnodesOpt = None, node_rank: NodeRankOpt = None, master_addr: MasterAddrOpt = None,
    master_port: MasterPortOpt = None,
) -> None:
    """Train task by task; after each task evaluate every task seen so far (the accuracy matrix).

    Examples:
      prism train --method ewc --tasks 0-2
      prism train --nproc 2 --restart --set train.epochs=2
      prism train --nproc 8 --nnodes 2 --node-rank 0 --master-addr node0   (and --node-rank 1 on node1)
    """
    from prism.cli.common import INVOCATION
    from prism.cli.progress import RichReporter
    from prism.cli.results import print_matrix, result_json
    from prism.config import load_config
    from prism.engine import launch
    from prism.engine.loop import train as run_training

    flags = run_flags(tasks=tasks, method=method, backbone=backbone, model=model, benchmark=benchmark,
                      output_dir=output_dir, seed=seed)
    flags.update({"backbone.train_precision": choice_value(train_precision), "distributed.nproc": nproc,
                  "distributed.gpus": gpus, "distributed.nnodes": nnodes, "distributed.node_rank": node_rank,
                  "distributed.master_addr": master_addr, "distributed.master_port": master_port})
    # every problem `prism config validate` reports, at once, before anything loads
    resolved = load_config(config, sets=set_ or [], flags=flags, check_run=True)
    console = stderr_console()
    cfg = resolved.config
    code = launch.relaunch_if_wanted(resolved, INVOCATION, announce=console.print)
    if code is not None:  # the run under torchrun has ended
        raise typer.Exit(code)
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


def register(app: typer.Typer) -> None:
    add_command(app, "train", train)
