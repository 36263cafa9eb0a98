"""Per-step training metrics: one JSON line per step in ``metrics.jsonl``, plus the
trackers the user asked accelerate for (``[train] report_to``: tensorboard, wandb, ...)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class MetricsLog:
    def __init__(self, path: Path | None, accelerator: Any, task: str, steps: int, *,
                 step_offset: int = 0, samples_before: int = 0, every: int = 1):
        self.every = every
        self.step_offset = step_offset  # optimizer steps of earlier tasks: trackers want one rising axis
        self.samples_before = samples_before  # samples done before this process resumed the task
        self.accelerator = accelerator
        self.task = task
        self.steps = steps
        self.writer = accelerator.is_main_process
        self.handle = None
        if path is not None and self.writer:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.handle = open(path, "a", encoding="utf-8")
        self.trackers = bool(getattr(accelerator, "trackers", None))

    def step(self, result: Any, loss: float, lr: float, grad_norm: Any, elapsed: float) -> None:
        row = {"task": self.task, "step": result.steps, "steps": self.steps, "loss": round(loss, 6),
               "lr": lr, "samples": result.samples,
               "samples_per_s": round((result.samples - self.samples_before) / max(elapsed, 1e-9), 2)}
        if grad_norm is not None:
            row["grad_norm"] = round(float(grad_norm), 6)
        if self.handle is not None and (result.steps % self.every == 0 or result.steps == self.steps):
            self.handle.write(json.dumps(row) + "\n")
            self.handle.flush()
        if self.trackers:
            self.accelerator.log({f"{self.task}/{k}": v for k, v in row.items()
                                  if k in ("loss", "lr", "grad_norm", "samples_per_s")}, step=self.step_offset + result.steps)

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None
