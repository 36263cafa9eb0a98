"""replay_lora: one LoRA whose training data is mixed with a small buffer of earlier tasks' samples.

Rehearsal is the simplest defence against forgetting: a few stored examples of
every finished task are trained on again with each new task. The buffer holds
the record dicts themselves (small JSON, ``_task`` included), so it travels in
``prism_state.json`` and a resumed run replays exactly what the first run stored.
"""

from __future__ import annotations

import copy
import random
from typing import Any, Literal

from pydantic import Field

from prism.methods.base import FitHandle, RunInfo, TaskContext
from prism.methods.ft_lora import FineTuneLoRA, FineTuneLoRAParams
PRISM_KEEP_PROBABILITY = 0.7


class ReplayLoRAParams(FineTuneLoRAParams):
    """Published settings: PRISM stores 180 samples in total, split evenly over the T-1
    earlier-task slots, each row kept with probability 0.7 until its slot is full, and
    concatenates the buffer to the next task's data. LoRA defaults are ft_lora's."""

    capacity: int = Field(180, ge=0, description="total samples the buffer stores (PRISM: 180)")
    split: Literal["even"] = Field(
        "even",
        description="how capacity is shared: 'even' gives each of the T-1 earlier tasks a slot of "
                    "capacity // (T-1) samples, as PRISM does (the last task is never replayed)",
    )
    sampling: Literal["reservoir", "prism_p07"] = Field(
        "reservoir",
        description="how a finished task fills its slot: 'reservoir' = uniform random sample of its "
                    "own records; 'prism_p07' = PRISM's rule, each row kept with probability 0.7 as the "
                    "training batches served it (shuffled order, replayed rows included) until the slot "
                    "is full",
    )
    mix: Literal["concat", "ratio"] = Field(
        "concat",
        description="how the buffer enters a task's data: 'concat' appends the whole buffer (PRISM); "
                    "'ratio' adds buffer samples drawn with replacement so they make up replay_ratio "
                    "of the task's record list",
    )
    replay_ratio: float = Field(
        0.2, ge=0, lt=1, description="with mix='ratio': fraction of the training list made of replayed samples"
    )


class ReplayLoRA(FineTuneLoRA):
    """ft_lora's single adapter (a stock peft LoRA on disk) plus the replay buffer."""

    id = "replay_lora"
    summary = "one LoRA; each task's data mixed with a buffer of earlier tasks' samples"
    Params = ReplayLoRAParams

    def __init__(self, params: ReplayLoRAParams, run: RunInfo):
        super().__init__(params, run)
        self.params: ReplayLoRAParams = params
        #: task name -> stored records, in the order tasks finished
        self.buffer: dict[str, list[dict]] = {}
        self._current: list[dict] = []

    # -- the buffer ------------------------------------------------------------------
    @property
    def slot_size(self) -> int:
        """Samples kept per finished task: capacity split evenly over the T-1 replayed tasks."""
        slots = self.run.num_tasks - 1
        return self.params.capacity // slots if slots > 0 else 0

    def buffered(self) -> list[dict]:
        """Every stored record, task by task."""
        return [record for records in self.buffer.values() for record in records]

    def training_records(self, task: TaskContext, records: list[dict]) -> list[dict]:
        """Remember this task's records (for its slot at end_task) and add the buffer."""
        self._current = list(records)
        stored = self.buffered()
        if not stored:
            return list(records)
        if self.params.mix == "concat":
            return list(records) + [dict(r) for r in stored]
        ratio = self.params.replay_ratio
        count = round(ratio * len(records) / (1 - ratio))
        rng = self._rng(task.index, stream=1)
        return list(records) + [dict(rng.choice(stored)) for _ in range(count)]

    def end_task(self, task: TaskContext, fit: FitHandle) -> None:
        """Fill the finished task's slot; the last task of the run gets none (never replayed)."""
        records, self._current = self._current, []
        if task.index >= self.run.num_tasks - 1 or self.slot_size == 0:
            return
        rng = self._rng(task.index, stream=0)
        if self.params.sampling == "reservoir":
            chosen = reservoir_sample(records, self.slot_size, rng)
        else:
            # PRISM stores rows as its dataloader serves them: in the task's shuffled training
            # order, buffer rows replayed in this task included
            chosen = probabilistic_fill(fit.served_records(), self.slot_size, rng, PRISM_KEEP_PROBABILITY)
        self.buffer[task.name] = [copy.deepcopy(r) for r in chosen]

    def _rng(self, task_index: int, stream: int) -> random.Random:
        """Seeded by run seed, task index and purpose, so reruns store and draw the same samples."""
        return random.Random((self.run.seed * 1_000_003 + task_index) * 2 + stream)

    # -- state ------------------------------------------------------------------------
    def state_metadata(self) -> dict[str, Any]:
        return {"sampling": self.params.sampling, "slot_size": self.slot_size,
                "buffer": copy.deepcopy(self.buffer)}

    def load_state(self, tensors: dict, metadata: dict[str, Any]) -> None:
        self.buffer = {name: [dict(r) for r in records]
                       for name, records in metadata.get("buffer", {}).items()}


def reservoir_sample(records: list[dict], k: int, rng: random.Random) -> list[dict]:
    """Algorithm R: a uniform sample of ``k`` records, kept in data order."""
    reservoir: list[int] = []
    for i in range(len(records)):
        if i < k:
            reservoir.append(i)
        else:
            j = rng.randint(0, i)
            if j < k:
                reservoir[j] = i
    return [records[i] for i in sorted(reservoir)]


def probabilistic_fill(records: list[dict], k: int, rng: random.Random, p: float) -> list[dict]:
    """PRISM's rule: walk the rows in the order given (as served), keep each with probability ``p``
    until ``k`` are kept."""
    kept: list[dict] = []
    for record in records:
        if len(kept) >= k:
            break
        if rng.random() < p:
            kept.append(record)
    return kept
