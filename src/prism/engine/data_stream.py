"""The endless, shuffled stream of micro-batches a task trains on, and where it is.

Each epoch is a permutation drawn from one seeded generator; micro-batches are
consecutive slices of it. With several processes, micro-batch ``j`` of an epoch
goes to rank ``j % world``, so every rank sees its own shard and one optimizer
step consumes the same samples whatever the number of processes. The position
(the generator's state at the start of the epoch and how many micro-batches of
the epoch are used) is small and exact, which is what a step checkpoint saves.
"""

from __future__ import annotations

from typing import Any

import torch

from prism.errors import ConfigError


class DataStream:
    def __init__(self, dataset: Any, micro_batch: int, seed: int, *, rank: int = 0, world: int = 1):
        self.dataset = dataset
        self.micro = micro_batch
        self.rank = rank
        self.world = world
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch = 0
        self.offset = 0  # micro-batches of this epoch consumed, counted over all ranks
        n = len(dataset)
        if n == 0:
            raise ConfigError("the task has no training records")
        if world > 1 and n < micro_batch * world:
            raise ConfigError(f"the task has {n} training records, fewer than micro batch ({micro_batch}) "
                              f"x processes ({world})", hint="lower [train] global_batch_size or micro_batch_size")
        self._start_epoch()

    def _start_epoch(self) -> None:
        self._epoch_state = self.generator.get_state()
        order = torch.randperm(len(self.dataset), generator=self.generator).tolist()
        full = len(order) // self.micro
        if full == 0:  # fewer records than one micro batch (single process): use them all
            self._chunks = [order]
            return
        full -= full % self.world  # every rank gets the same number of micro-batches
        self._chunks = [order[i * self.micro:(i + 1) * self.micro] for i in range(full)]

    def next(self) -> Any:
        """This rank's next micro-batch (a new epoch starts when this one is used up)."""
        if self.offset + self.world > len(self._chunks):
            self.epoch += 1
            self.offset = 0
            self._start_epoch()
        chunk = self._chunks[self.offset + self.rank]
        self.offset += self.world
        return self.dataset.batch(chunk)

    def served_indices(self, micro_batches: int) -> list[int]:
        """Record indices of the first ``micro_batches`` global micro-batches, in serving order.

        Every rank's share is included (micro-batch ``j`` of an epoch is rank ``j % world``'s),
        so all ranks compute the same list. Call it on a fresh stream with the fit's seed.
        """
        served: list[int] = []
        taken = 0
        while taken < micro_batches:
            if self.offset >= len(self._chunks):
                self.epoch += 1
                self.offset = 0
                self._start_epoch()
            served.extend(self._chunks[self.offset])
            self.offset += 1
            taken += 1
        return served

    def state(self) -> tuple[torch.Tensor, dict[str, Any]]:
        return self._epoch_state.clone(), {"epoch": self.epoch, "offset": self.offset,
                                           "micro": self.micro, "world": self.world}

    def restore(self, generator_state: torch.Tensor, meta: dict[str, Any]) -> None:
        if (meta.get("micro"), meta.get("world")) != (self.micro, self.world):
            raise ConfigError(
                f"the step checkpoint was written with micro batch {meta.get('micro')} on {meta.get('world')} "
                f"process(es); this run uses {self.micro} on {self.world}",
                hint="resume with the same [train] micro_batch_size and number of processes, or pass --restart")
        self.generator.set_state(generator_state)
        self.epoch = int(meta["epoch"])
        self._start_epoch()
        self.offset = int(meta["offset"])
