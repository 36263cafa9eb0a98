"""What a run cost: wall time, throughput, peak memory and device-hours per task (run.json ``costs``).

No MCIT tool publishes what its runs cost; prism records it for every run. The loop calls
a ``CostTracker`` around each task's training and each row's evaluation; every update is an
atomic rewrite of run.json's ``costs`` key, so a kill loses at most the task in progress.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

from prism.engine.run_record import read_run_record, update_run_record

COSTS_KEY = "costs"


def _rate(count: float, seconds: float) -> float | None:
    return round(count / seconds, 3) if seconds > 0 else None


def totals_of(tasks: dict[str, dict[str, Any]], devices: int) -> dict[str, Any]:
    """Sums over the tasks, throughput over the summed times, device-hours = devices x wall hours."""
    def total(phase: str, key: str) -> float:
        return sum(float(t.get(phase, {}).get(key) or 0) for t in tasks.values())

    train_s, eval_s = total("train", "seconds"), total("eval", "seconds")
    peaks = [t["peak_memory_bytes"] for t in tasks.values() if t.get("peak_memory_bytes") is not None]
    return {
        "train_seconds": round(train_s, 3), "eval_seconds": round(eval_s, 3),
        "train_samples": int(total("train", "samples")), "train_tokens": int(total("train", "tokens")),
        "train_steps": int(total("train", "steps")),
        "train_samples_per_s": _rate(total("train", "samples"), train_s),
        "train_tokens_per_s": _rate(total("train", "tokens"), train_s),
        "generations": int(total("eval", "generations")),
        "generated_tokens": int(total("eval", "generated_tokens")),
        "eval_samples_per_s": _rate(total("eval", "generations"), eval_s),
        "eval_tokens_per_s": _rate(total("eval", "generated_tokens"), eval_s),
        "seconds": round(train_s + eval_s, 3),
        "device_hours": devices * (train_s + eval_s) / 3600,
        "peak_memory_bytes": max(peaks) if peaks else None,
    }


class CostTracker:
    """Measures one run's tasks; only the main process writes run.json."""

    def __init__(self, results_dir: Path, accelerator: Any, *, main: bool):
        import torch

        self.results_dir, self.accelerator, self.main = results_dir, accelerator, main
        self.devices = int(accelerator.num_processes)
        self.cuda = accelerator.device.type == "cuda" and torch.cuda.is_available()
        self.tasks: dict[str, dict[str, Any]] = {}
        self._started = 0.0

    # -- resume ----------------------------------------------------------------------------
    def load_previous(self) -> None:
        """Read the costs an earlier attempt of this run recorded (call before run.json is rewritten)."""
        previous = read_run_record(self.results_dir).get(COSTS_KEY, {})
        tasks = previous.get("tasks", {}) if isinstance(previous, dict) else {}
        self.tasks = {k: dict(v) for k, v in tasks.items() if isinstance(v, dict)}

    def keep(self, names: list[str]) -> None:
        """Keep only the costs of the tasks the run skips (a --restart or retrained task starts afresh)."""
        self.tasks = {k: v for k, v in self.tasks.items() if k in names}
        self._save()

    # -- training ----------------------------------------------------------------------------
    def train_started(self) -> None:
        self._reset_peak()
        self._started = time.perf_counter()

    def train_finished(self, name: str, result: Any | None) -> None:
        """``result``: the FitResult (None for a method that does not train)."""
        seconds = time.perf_counter() - self._started
        samples = int(getattr(result, "samples", 0) or 0)
        tokens = int(getattr(result, "tokens", 0) or 0)
        # resumed mid-task: the time and tokens are this attempt's, so the rate is over its samples only
        resumed = int(getattr(result, "resumed_samples", 0) or 0)
        entry = self.tasks.setdefault(name, {})
        entry["train"] = {"seconds": round(seconds, 3), "samples": samples,
                          "samples_per_s": _rate(samples - resumed, seconds),
                          "tokens": tokens, "tokens_per_s": _rate(tokens, seconds),
                          "steps": int(getattr(result, "steps", 0) or 0)}
        if resumed:
            entry["train"]["resumed_samples"] = resumed
        self._record_peak(entry, self._peak())

    # -- evaluation --------------------------------------------------------------------------
    def eval_started(self) -> None:
        self._started = time.perf_counter()

    def eval_finished(self, name: str, prediction_files: list[Path], tokenizer: Any) -> None:
        """A row's evaluation, on every rank (each generated a share: the peak is a max over them); rank 0
        counts the merged predictions and replaces that row's earlier eval cost if it is re-evaluated."""
        seconds = time.perf_counter() - self._started
        peak = self._peak()
        if not self.main:
            return
        generations, tokens = count_generated(prediction_files, tokenizer)
        entry = self.tasks.setdefault(name, {})
        entry["eval"] = {"seconds": round(seconds, 3), "generations": generations,
                         "samples_per_s": _rate(generations, seconds), "generated_tokens": tokens,
                         "tokens_per_s": _rate(tokens, seconds)}
        self._record_peak(entry, peak)
        self._save()

    def task_done(self) -> None:
        """After a task's training (all ranks: the peak is a max over them); then run.json."""
        self._save()

    # -- memory ------------------------------------------------------------------------------
    def _reset_peak(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.reset_peak_memory_stats(self.accelerator.device)

    def _local_peak(self) -> int:
        if self.cuda:
            import torch

            return int(torch.cuda.max_memory_allocated(self.accelerator.device))
        # ru_maxrss is KiB on Linux, bytes on macOS; the process peak since start, never reset
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(rss if sys.platform == "darwin" else rss * 1024)

    def _peak(self) -> int:
        """This process's peak, max over the ranks (every rank must call it)."""
        peak = self._local_peak()
        if self.devices > 1:
            import torch

            value = torch.tensor([peak], dtype=torch.int64, device=self.accelerator.device)
            peak = int(self.accelerator.reduce(value, reduction="max").item())
        return peak

    def _record_peak(self, entry: dict[str, Any], peak: int) -> None:
        entry["peak_memory_bytes"] = max(peak, int(entry.get("peak_memory_bytes") or 0))

    # -- the record --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        device_type = "cuda" if self.cuda else "cpu"
        out = {"tasks": self.tasks, "totals": totals_of(self.tasks, self.devices), "devices": self.devices,
               "device_type": device_type,
               "peak_memory_kind": "cuda max_memory_allocated" if self.cuda else "process peak RSS (ru_maxrss)"}
        hours = out["totals"]["device_hours"]
        out["gpu_hours" if self.cuda else "device_hours"] = hours
        return out

    def _save(self) -> None:
        if self.main:
            update_run_record(self.results_dir, **{COSTS_KEY: self.to_dict()})


def count_generated(prediction_files: list[Path], tokenizer: Any) -> tuple[int, int]:
    """(predictions, tokens of their text) in the row's prediction files, re-tokenised."""
    generations = tokens = 0
    for path in prediction_files:
        if not path.is_file():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            try:
                text = json.loads(line).get("text", "")
            except ValueError:
                continue
            generations += 1
            if text:
                tokens += len(tokenizer(text, add_special_tokens=False)["input_ids"])
    return generations, tokens
