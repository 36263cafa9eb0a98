"""`prism data check`: every problem of a benchmark's data in one report.

Exit 0 when the data is clean, 1 when anything is wrong (after printing the
whole report), 2 for configuration errors. ``--write-manifest`` also records the
sha256 and size of every image in the benchmark root's image manifest, which
training and evaluation then check images against.
"""

from __future__ import annotations

from typing import Annotated

import typer

from prism.cli.common import emit_json, stderr_console
from prism.cli.help_text import add_command, group, option
from prism.cli.options import CheckBenchmarkOpt, CheckTasksOpt, ConfigOpt, JsonOpt, SetOpt

NoImagesOpt = Annotated[bool, option(
    "--no-images", help="Check the annotation files only; do not open image files (much faster).")]
MaxExamplesOpt = Annotated[int, option(
    "--max-examples", min=1, help="How many examples to list per problem kind.")]
WriteManifestOpt = Annotated[bool, option(
    "--write-manifest", help="Record the sha256 and size of every image the checked records reference "
    "in <root>/prism_images.sha256 (written only when the check finds no problem).")]


def check(benchmark: CheckBenchmarkOpt = None, tasks: CheckTasksOpt = None, config: ConfigOpt = None,
          set_: SetOpt = None, no_images: NoImagesOpt = False, max_examples: MaxExamplesOpt = 10,
          write_manifest: WriteManifestOpt = False, json_: JsonOpt = False) -> None:
    """Validate the selected tasks' training and test files, their images and caption ground truth.

    Examples:
      prism data check --no-images
      prism data check -b ucit --tasks 0,2 --write-manifest
    """
    from prism.config import load_config, task_selection
    from prism.plugins import registry

    resolved = load_config(config, sets=set_, flags={"benchmark.id": benchmark, "benchmark.tasks": tasks},
                           validate_method=False)
    cfg = resolved.config
    if write_manifest and no_images:
        from prism.errors import UsageError

        raise UsageError("--write-manifest reads every image; it cannot be combined with --no-images")
    bench = registry("benchmark", resolved.project_dir).load(cfg.benchmark.id)(cfg.benchmark, resolved.project_dir)
    # Configuration mistakes (task names, overrides) surface before the slow imports below.
    task_selection(cfg.benchmark.tasks, [spec.name for spec in bench.task_specs()])
    if cfg.benchmark.id == "synthetic":
        bench.prepare()  # generated on first use; checking an absent folder would only say "missing"

    from prism.benchmarks.check import check_benchmark, check_summary_error  # imports torch (via data.py)
    console = stderr_console()
    with _progress(console, enabled=not json_) as update:
        report = check_benchmark(bench, check_images=not no_images, max_examples=max_examples,
                                 progress=update, write_manifest=write_manifest)
    if json_:
        emit_json(report.to_dict())
    else:
        report.render(console, summary=report.ok)  # with problems, the error line is the summary
        if report.manifest is not None:
            console.print(f"image manifest: {report.manifest_images} image(s) recorded in {report.manifest}",
                          highlight=False, markup=False)
    if not report.ok:
        error = check_summary_error(report)
        if write_manifest:
            error.message += "; the image manifest was not written"
        raise error


class _progress:
    """A transient rich progress bar on stderr, fed by check_benchmark's callback."""

    def __init__(self, console, enabled: bool):
        self.console = console
        self.enabled = enabled and console.is_terminal
        self._bar = None
        self._tasks: dict[str, int] = {}

    def __enter__(self):
        if not self.enabled:
            return None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TimeElapsedColumn(), console=self.console, transient=True)
        self._bar.start()
        return self.update

    def update(self, description: str, done: int, total: int) -> None:
        if description not in self._tasks:
            self._tasks[description] = self._bar.add_task(f"check {description}", total=total)
        self._bar.update(self._tasks[description], completed=done)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()


def register(app: typer.Typer) -> None:
    data = group("Check a benchmark's data: files, records, images, ids and caption ground truth.\n\n"
                 "Examples:\n  prism data check\n  prism data check -b ucit --no-images", no_args_is_help=True)
    add_command(data, "check", check)
    app.add_typer(data, name="data")
