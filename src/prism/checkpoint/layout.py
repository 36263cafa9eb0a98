"""Where a run's files live: PRISM's layout, so users of PRISM recognise it.

``<output>/checkpoints/<benchmark>/<method>/Task<k>_<backbone>/`` — one folder per
task learned (k = the benchmark's index of that task); predictions and results
mirror it under ``predictions/`` and ``results/``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

CHECKPOINT_NAME = re.compile(r"^Task(\d+)_(.+)$")


@dataclass(frozen=True)
class RunLayout:
    output_dir: Path
    benchmark: str
    method: str
    backbone: str

    @property
    def checkpoints_dir(self) -> Path:
        return self.output_dir / "checkpoints" / self.benchmark / self.method

    @property
    def predictions_dir(self) -> Path:
        return self.output_dir / "predictions" / self.benchmark / self.method

    @property
    def results_dir(self) -> Path:
        return self.output_dir / "results" / self.benchmark / self.method

    def checkpoint_name(self, task_index: int) -> str:
        return f"Task{task_index}_{self.backbone}"

    def checkpoint(self, task_index: int) -> Path:
        return self.checkpoints_dir / self.checkpoint_name(task_index)

    def step_checkpoint(self, task_index: int) -> Path:
        """The latest step checkpoint of a task still being learned (removed when the task ends)."""
        return self.checkpoints_dir / "steps" / self.checkpoint_name(task_index)

    def predictions(self, task_index: int) -> Path:
        """Prediction files of every task evaluated after learning ``task_index``."""
        return self.predictions_dir / self.checkpoint_name(task_index)

    def prediction_file(self, learned_index: int, task_name: str) -> Path:
        return self.predictions(learned_index) / f"{task_name}.jsonl"


def parse_checkpoint_name(name: str) -> tuple[int, str] | None:
    match = CHECKPOINT_NAME.match(name)
    return (int(match.group(1)), match.group(2)) if match else None
