"""The training progress line shows loss and throughput (and rich adds elapsed/remaining time)."""

from __future__ import annotations

import io
import time
from types import SimpleNamespace

from rich.console import Console

from prism.cli.progress import RichReporter


def test_progress_shows_loss_and_steps_per_second():
    reporter = RichReporter(Console(file=io.StringIO(), force_terminal=False, width=200))
    reporter.task_started(0, 2, "colour", 10)
    reporter.step(4, 10, 0.5)  # a resumed task: the first step this process ran is 4
    time.sleep(0.05)
    reporter.step(5, 10, 0.25)
    info = reporter.progress.tasks[0].fields["info"]
    assert info.startswith("loss 0.2500 · ") and info.endswith("steps/s")
    assert reporter.progress.tasks[0].completed == 5
    reporter.task_finished("colour", SimpleNamespace(samples=80, seconds=1.0, steps=5, final_loss=0.25))
    reporter.close()
    assert "trained colour: 5 steps, loss 0.2500, 80 samples/s" in reporter.console.file.getvalue()
