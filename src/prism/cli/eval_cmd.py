"""`prism eval`: score a run from its prediction files; `prism eval score` re-scores any file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from prism.cli.common import emit_json, stderr_console
from prism.cli.completion import complete_metric
from prism.cli.help_text import add_command, argument, group, option
from prism.cli.options import BenchmarkOpt, ConfigOpt, JsonOpt, MethodOpt, OutputOpt, SetOpt, TasksOpt, run_flags

MethodsArg = Annotated[list[str], argument(help="Method ids whose runs to compare, e.g. ft_lora replay_lora.")]
PredictionsArg = Annotated[Path, argument(help="Prediction JSONL file.")]
MetricOpt = Annotated[str, option("--metric", help="Metric id (e.g. exact_match, coco_caption).",
                                  autocompletion=complete_metric)]
GroundTruthOpt = Annotated[Optional[Path], option(
    "--gt", help="Official ground truth, joined by question_id (captions: by image): a test JSON, "
                 "TextVQA/VQAv2 annotations or COCO caption ground truth. Without it the "
                 "predictions' own 'answer' fields are used.")]


def run_eval(
    ctx: typer.Context,
    tasks: TasksOpt = None, method: MethodOpt = None, benchmark: BenchmarkOpt = None,
    output_dir: OutputOpt = None, config: ConfigOpt = None, set_: SetOpt = None, json_: JsonOpt = False,
) -> None:
    """Score the configured run's predictions: matrix, MFN/MFT/MAA/BWT, heatmap, curves, report."""
    if ctx.invoked_subcommand is not None:
        return
    from prism.cli.results import print_matrix, result_json
    from prism.config import load_config
    from prism.engine.rescore import rescore, write_artifacts

    flags = run_flags(tasks=tasks, method=method, benchmark=benchmark, output_dir=output_dir)
    resolved = load_config(config, sets=set_ or [], flags=flags)
    layout, matrix, summary = rescore(resolved)
    artifacts = write_artifacts(resolved, layout, matrix, summary)
    console = stderr_console()
    print_matrix(console, matrix, summary, title=f"{layout.method} on {layout.benchmark}")
    for kind, path in artifacts.items():
        console.print(f"{kind}: {path}")
    if json_:
        out = result_json(layout, matrix, summary)
        out["artifacts"] = {k: str(v) for k, v in artifacts.items()}
        emit_json(out)


def compare(
    methods: MethodsArg, tasks: TasksOpt = None, benchmark: BenchmarkOpt = None, output_dir: OutputOpt = None,
    config: ConfigOpt = None, set_: SetOpt = None, json_: JsonOpt = False,
) -> None:
    """Several runs (one per method) side by side: Last/MFN, MFT, MAA, BWT, Forgetting, and what each cost.

    Examples:
      prism eval compare ft_lora ewc
      prism eval compare ft_lora replay_lora --benchmark ucit --json
    """
    from prism.config import load_config
    from prism.engine.rescore import compared_run
    from prism.evaluation.matrix import render_comparison

    runs = {}
    for method_id in methods:
        flags = run_flags(tasks=tasks, method=method_id, benchmark=benchmark, output_dir=output_dir)
        resolved = load_config(config, sets=set_ or [], flags=flags)
        runs[method_id] = compared_run(resolved)
    if json_:
        emit_json({m: {"tasks": list(r["matrix"].task_names), "matrix": r["matrix"].to_list(),
                       "cl_metrics": r["summary"], "costs": r["costs"]} for m, r in runs.items()})
        return
    stderr_console().print(render_comparison({m: r["summary"] for m, r in runs.items()},
                                             title="methods compared", costs={m: r["costs"] for m, r in runs.items()}))


def score(
    predictions: PredictionsArg, metric: MetricOpt, gt: GroundTruthOpt = None, json_: JsonOpt = False,
) -> None:
    """Re-score one prediction file offline, e.g. one written by another MCIT tool (with --gt).

    Examples:
      prism eval score outputs/predictions/synthetic/ewc/Task1_llava/colour.jsonl --metric exact_match
      prism eval score predictions.jsonl --metric vqa_accuracy --gt TextVQA_0.5.1_val.json
    """
    from rich.markup import escape

    from prism.cli.common import project_dir_for_plugins
    from prism.errors import UsageError
    from prism.evaluation.ground_truth import CAPTIONS, load_ground_truth, score_against
    from prism.evaluation.metrics import load_predictions
    from prism.plugins import registry

    if not predictions.is_file():
        raise UsageError(f"prediction file {predictions} does not exist")
    if gt is not None and not gt.is_file():
        raise UsageError(f"ground-truth file {gt} does not exist")
    fn = registry("metric", project_dir_for_plugins()).load(metric)
    records = load_predictions(predictions, allow_empty=False)
    truth = load_ground_truth(gt) if gt is not None else None
    if truth is None:
        result, join = fn(records, gt=None), None
    else:
        result, join = score_against(fn, records, truth, metric_id=metric, predictions_source=str(predictions))
    data = result.to_dict()
    if json_:
        out = {"file": str(predictions), "metric": metric, **data}
        if truth is not None and join is not None:
            out["ground_truth"] = {"file": truth.source, "layout": truth.layout,
                                   "predictions_without_gt": join.without_gt,
                                   "gt_without_prediction": join.without_prediction}
        emit_json(out)
        return
    console = stderr_console()
    console.print(f"{metric}: [bold]{result.score:.2f}[/] over {result.n} predictions")
    if truth is not None and join is not None:
        unit = "ground-truth images" if truth.kind == CAPTIONS else "ground-truth questions"
        console.print(escape(f"ground truth: {truth.source} ({truth.layout}); {len(join.without_gt)} predictions "
                             f"without ground truth, {len(join.without_prediction)} {unit} without prediction"))
        if join.without_gt:
            console.print(escape(f"  not scored (no ground truth): question_id {_first(join.without_gt)}"))
    for key, value in (data.get("details") or {}).items():
        console.print(f"  {key}: {value}")
    for key, reason in (data.get("unavailable") or {}).items():
        console.print(f"  {key}: unavailable ({reason})")


def register(app: typer.Typer) -> None:
    evaluation = group("Accuracy matrix, CL metrics, plots and report from prediction files.\n\n"
                       "Examples:\n  prism eval --method ewc\n  prism eval compare ft_lora ewc",
                       invoke_without_command=True)
    evaluation.callback()(run_eval)
    add_command(evaluation, "compare", compare)
    add_command(evaluation, "score", score)
    app.add_typer(evaluation, name="eval")


def _first(ids: list, limit: int = 5) -> str:
    """A few ids, for a line a person reads."""
    return ", ".join(repr(i) for i in ids[:limit]) + (f", ... ({len(ids)} in all)" if len(ids) > limit else "")
