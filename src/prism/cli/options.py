"""The options several commands share, each defined once (cheap to import: no torch).

The run flags (--tasks, --method, ...) are shortcuts for config keys; :func:`run_flags`
maps them to dotted keys for ``load_config(flags=...)``. Precisions and dtypes are
choices: a value outside them is a usage error (exit 2) before any config loads, and
shell completion offers them.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

from prism.backbones.precision import INFER_PRECISIONS, TRAIN_PRECISIONS
from prism.cli.completion import (complete_backbone, complete_benchmark, complete_method, complete_precision,
                                  complete_tasks)
from prism.cli.help_text import option

# -- config ------------------------------------------------------------------------------------
ConfigOpt = Annotated[
    Optional[Path],
    option("--config", "-c", help="prism.toml to use (default: $PRISM_CONFIG, else the nearest "
           "prism.toml in this or a parent folder).", show_default=False),
]
SetOpt = Annotated[
    Optional[list[str]],
    option("--set", "-s", help="Override a config value: KEY=VALUE, the value parsed as TOML "
           "(e.g. --set train.lr=1e-4 --set 'benchmark.tasks=[0,2]'). Repeatable.",
           show_default=False),
]
JsonOpt = Annotated[bool, option("--json", help="Print machine-readable JSON on stdout.")]

# -- which run ---------------------------------------------------------------------------------
TasksOpt = Annotated[Optional[str], option("--tasks", "-t", help="Tasks to run, by index or "
                     "name: '0-4', '0,2,3', 'colour,count'. Default: all tasks of the benchmark.",
                     autocompletion=complete_tasks)]
MethodOpt = Annotated[Optional[str], option("--method", "-m", help="Method id (`prism methods list`).",
                                            autocompletion=complete_method)]
BackboneOpt = Annotated[Optional[str], option("--backbone", help="Backbone id (e.g. llava).",
                                              autocompletion=complete_backbone)]
ModelOpt = Annotated[Optional[str], option("--model", help="Model path or hub id, or builtin:tiny-llava.")]
BenchmarkOpt = Annotated[Optional[str], option("--benchmark", "-b", help="Benchmark id (e.g. synthetic, ucit).",
                                               autocompletion=complete_benchmark)]
OutputOpt = Annotated[Optional[str], option("--output-dir", "-o",
                                            help="Folder for checkpoints, predictions and results.")]
SeedOpt = Annotated[Optional[int], option("--seed", help="Seed for data order, adapter init and dropout.")]

# the same settings, worded for the commands that check or show rather than run
CheckBenchmarkOpt = Annotated[Optional[str], option(
    "--benchmark", "-b", help="Benchmark id (overrides benchmark.id): ucit, coin, trigap, synthetic.",
    show_default=False, autocompletion=complete_benchmark)]
CheckTasksOpt = Annotated[Optional[str], option(
    "--tasks", "-t", help="Tasks to check, by index or name: '0-4', '0,2', 'IconQA,Flickr30k'. "
    "Default: benchmark.tasks, else all.", show_default=False,
    autocompletion=complete_tasks)]
ShowMethodOpt = Annotated[Optional[str], option(
    "--method", "-m", help="Method id (overrides method.id).", show_default=False,
    autocompletion=complete_method)]


def run_flags(*, tasks: Optional[str] = None, method: Optional[str] = None, backbone: Optional[str] = None,
              model: Optional[str] = None, benchmark: Optional[str] = None, output_dir: Optional[str] = None,
              seed: Optional[int] = None) -> dict[str, Any]:
    """Dedicated flags as dotted config keys (None = not given)."""
    return {"benchmark.tasks": tasks, "method.id": method, "backbone.id": backbone, "backbone.model": model,
            "benchmark.id": benchmark, "project.output_dir": output_dir, "project.seed": seed}


# -- choices -----------------------------------------------------------------------------------
def _choices(name: str, values: tuple[str, ...]) -> type[Enum]:
    """A str enum whose members are ``values`` (typer turns it into a choice)."""
    return Enum(name, [(value, value) for value in values], type=str)  # type: ignore[return-value]


#: [backbone] train_precision (prism.config.schema accepts exactly these)
TrainPrecision = _choices("TrainPrecision", TRAIN_PRECISIONS)
#: [infer] precision: "auto" (as trained) or a train precision
InferPrecision = _choices("InferPrecision", INFER_PRECISIONS)
#: the dtypes `prism ckpt convert` and `prism ckpt export` write ("auto": the source's own)
WeightDtype = _choices("WeightDtype", ("auto", "float32", "float16", "bfloat16"))


def choice_value(value: Optional[Enum]) -> Optional[str]:
    """The plain string of a choice (None stays None)."""
    return None if value is None else str(value.value)


TrainPrecisionOpt = Annotated[Optional[TrainPrecision], option(  # type: ignore[valid-type]
    "--train-precision", help="How to load and train the model ([backbone] train_precision): fp32, bf16, fp16, "
    "8bit or 4bit (bitsandbytes, QLoRA-style). Evaluation after each task uses the same model.",
    autocompletion=complete_precision, show_default=False)]
InferPrecisionOpt = Annotated[Optional[InferPrecision], option(  # type: ignore[valid-type]
    "--precision", help="How to load the model ([infer] precision): auto (as trained), fp32, bf16, "
    "fp16, 8bit or 4bit.", autocompletion=complete_precision, show_default=False)]
