"""`prism infer`: predictions and the accuracy matrix from saved checkpoints."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from prism.cli.common import emit_json, stderr_console
from prism.cli.completion import complete_checkpoint
from prism.cli.help_text import add_command, option
from prism.cli.options import (BackboneOpt, BenchmarkOpt, ConfigOpt, InferPrecisionOpt, JsonOpt, MethodOpt,
                               ModelOpt, OutputOpt, SetOpt, TasksOpt, choice_value, run_flags)

CkptOpt = Annotated[Optional[list[str]], option("--ckpt", help="Only these checkpoints "
                    "(e.g. Task2_llava); default: every complete checkpoint of the run.",
                    autocompletion=complete_checkpoint)]
Load8bitOpt = Annotated[bool, option("--load-8bit", help="Same as --precision 8bit (bitsandbytes).")]
Load4bitOpt = Annotated[bool, option("--load-4bit", help="Same as --precision 4bit (bitsandbytes NF4).")]
NoVerifyOpt = Annotated[bool, option("--no-verify", help="Skip the sha256 hashes of the checkpoints "
                                     "(sizes and the manifest's listing are still checked).")]


def infer(
    ckpt: CkptOpt = None,
    tasks: TasksOpt = None, method: MethodOpt = None, backbone: BackboneOpt = None, model: ModelOpt = None,
    benchmark: BenchmarkOpt = None, output_dir: OutputOpt = None, precision: InferPrecisionOpt = None,
    load_8bit: Load8bitOpt = False, load_4bit: Load4bitOpt = False, no_verify: NoVerifyOpt = False,
    config: ConfigOpt = None, set_: SetOpt = None, json_: JsonOpt = False,
) -> None:
    """Verify each checkpoint, load the base model once, swap in each checkpoint's adapters, and predict
    every task it has seen.

    Examples:
      prism infer
      prism infer --ckpt Task1_llava --load-4bit
    """
    from prism.cli.progress import RichReporter
    from prism.cli.results import print_matrix, result_json
    from prism.config import load_config
    from prism.engine.infer import infer as run_infer

    flags = run_flags(tasks=tasks, method=method, backbone=backbone, model=model, benchmark=benchmark,
                      output_dir=output_dir)
    flags["infer.precision"] = precision_flag(choice_value(precision), load_8bit, load_4bit)
    resolved = load_config(config, sets=set_ or [], flags=flags)
    console = stderr_console()
    reporter = RichReporter(console)
    try:
        layout, matrix, summary = run_infer(resolved, only=ckpt, reporter=reporter, hashes=not no_verify)
    finally:
        reporter.close()
    from prism.engine.run_record import read_run_record

    cache = read_run_record(layout.results_dir).get("feature_cache")  # this infer's images encoded / served
    print_matrix(console, matrix, summary, title=f"{layout.method} on {layout.benchmark}")
    if cache and cache.get("mode") != "off":
        console.print(f"vision features: {cache['images_encoded']} images encoded, "
                      f"{cache['images_served']} served from the cache")
    if json_:
        emit_json({**result_json(layout, matrix, summary), "feature_cache": cache})


def precision_flag(precision: str | None, load_8bit: bool, load_4bit: bool) -> str | None:
    """The one precision the flags ask for (None: none given); two different ones are a usage error."""
    from prism.errors import UsageError

    given = {name: mode for name, mode in (("--precision", precision), ("--load-8bit", "8bit" if load_8bit else None),
                                           ("--load-4bit", "4bit" if load_4bit else None)) if mode is not None}
    if len(set(given.values())) > 1:
        raise UsageError(f"{' and '.join(given)} ask for different precisions; give one")
    return next(iter(given.values()), None)


def register(app: typer.Typer) -> None:
    add_command(app, "infer", infer)
