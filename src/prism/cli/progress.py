"""Rich progress on stderr for training and evaluation."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from prism.engine.reporter import Reporter


class RichReporter(Reporter):
    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True, emoji=False)
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=self.console, transient=True,
        )
        self._task: Any = None
        self._first: tuple[int, float] | None = None
        self._started = False

    def _ensure(self) -> None:
        if not self._started:
            self.progress.start()
            self._started = True

    def close(self) -> None:
        if self._started:
            self.progress.stop()
            self._started = False

    def task_started(self, position: int, total: int, name: str, steps: int) -> None:
        self._ensure()
        self._task = self.progress.add_task(f"train [{position + 1}/{total}] {name}", total=steps, info="")
        self._first: tuple[int, float] | None = None  # (step, time) of the first step this process ran

    def step(self, step: int, steps: int, loss: float) -> None:
        if self._task is None:
            return
        now = time.perf_counter()
        if self._first is None:
            self._first = (step, now)
        done, since = step - self._first[0], now - self._first[1]
        rate = f" · {done / since:.1f} steps/s" if done and since > 0 else ""
        self.progress.update(self._task, completed=step, info=f"loss {loss:.4f}{rate}")

    def task_finished(self, name: str, fit: Any) -> None:
        if self._task is not None:
            self.progress.remove_task(self._task)
            self._task = None
        rate = fit.samples / fit.seconds if fit.seconds else 0.0
        final = f"{fit.final_loss:.4f}" if fit.final_loss is not None else "-"
        self.console.print(f"trained [bold]{name}[/]: {fit.steps} steps, loss {final}, "
                           f"{rate:.0f} samples/s, {fit.seconds:.1f}s")

    def task_skipped(self, name: str, reason: str) -> None:
        self.console.print(f"skipped [bold]{name}[/]: {reason}")

    def eval_started(self, learned: str, task: str, total: int) -> None:
        self._ensure()
        self._task = self.progress.add_task(f"eval after {learned}: {task}", total=total, info="")

    def eval_progress(self, done: int, total: int) -> None:
        if self._task is not None:
            self.progress.update(self._task, completed=done)

    def eval_finished(self, learned: str, task: str, score: float) -> None:
        if self._task is not None:
            self.progress.remove_task(self._task)
            self._task = None
        self.console.print(f"  after {learned}: {task} = {score:.2f}")

    def message(self, text: str) -> None:
        self.console.print(text)
