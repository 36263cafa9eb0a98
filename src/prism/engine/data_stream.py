"""The endless, shuffled stream of micro-batches a task trains on, and where it is.

Each epoch is a permutation drawn from one seeded generator; micro-batches are
consecutive slices of it. With several processes, micro-batch ``j`` of an epoch
goes to rank ``j % world``, so every rank sees its own shard and one optimizer
step consumes the same samples whatever the number of processes. The position
(the generator's state at the start of the epoch and how many micro-batches of
the epoch are used) is small and exact, which is what a step checkpoint saves.

Given the records' lengths, an epoch is length-grouped (LLaVA's
``group_by_modality_length``): the permutation is split into records with and
without an image, each is cut into groups of one global batch, a group is sorted
by length and cut into micro-batches, and the groups are shuffled. A step then
holds records of one modality and similar length, so little of a micro-batch is
padding; which records a step trains on is still random, and the same whatever
the number of processes (only how a step is split into micro-batches follows the
lengths). The groups left over (at most one per modality) are merged into a last
mixed group. Within a group, micro-batches are dealt to ranks longest first,
back and forth, so that no rank always gets the longest ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from prism.errors import ConfigError


class DataStream:
    def __init__(self, dataset: Any, micro_batch: int, seed: int, *, rank: int = 0, world: int = 1,
                 accumulation: int = 1, lengths: Sequence[int] | None = None):
        """``lengths``: per record, a token count signed by modality (positive with an image,
        negative without; ``TaskDataset.modality_lengths()``), or None for plain shuffling."""
        self.dataset = dataset
        self.micro = micro_batch
        self.rank = rank
        self.world = world
        self.accumulation = accumulation
        self.lengths = None if lengths is None else list(lengths)
        #: records per length group (one global batch), 0 without grouping
        self.group = 0 if lengths is None else micro_batch * world * accumulation
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch = 0
        self.offset = 0  # micro-batches of this epoch consumed, counted over all ranks
        n = len(dataset)
        if n == 0:
            raise ConfigError("the task has no training records")
        if world > 1 and n < micro_batch * world:
            raise ConfigError(f"the task has {n} training records, fewer than micro batch ({micro_batch}) "
                              f"x processes ({world})", hint="lower [train] global_batch_size or micro_batch_size")
        if self.lengths is not None and len(self.lengths) != n:
            raise ValueError(f"{len(self.lengths)} lengths for {n} records")
        self._start_epoch()

    def _start_epoch(self) -> None:
        self._epoch_state = self.generator.get_state()
        order = torch.randperm(len(self.dataset), generator=self.generator).tolist()
        if self.lengths is not None:
            self._chunks = self._grouped_chunks(order)
            return
        full = len(order) // self.micro
        if full == 0:  # fewer records than one micro batch (single process): use them all
            self._chunks = [order]
            return
        full -= full % self.world  # every rank gets the same number of micro-batches
        self._chunks = [order[i * self.micro:(i + 1) * self.micro] for i in range(full)]

    def _grouped_chunks(self, order: list[int]) -> list[list[int]]:
        lengths = self.lengths
        size = self.group
        full: list[list[int]] = []
        rest: list[int] = []
        for modality in (True, False):
            members = [i for i in order if (lengths[i] > 0) == modality]
            cut = len(members) - len(members) % size
            full.extend(members[start:start + size] for start in range(0, cut, size))
            rest.extend(members[cut:])
        shuffled = torch.randperm(len(full), generator=self.generator).tolist()
        chunks: list[list[int]] = []
        for group in [full[k] for k in shuffled] + ([rest] if rest else []):
            chunks.extend(self._deal(sorted(group, key=lambda i: -abs(lengths[i]))))
        if not chunks:  # fewer records than one micro batch (single process): use them all
            return [sorted(order, key=lambda i: -abs(lengths[i]))]
        return chunks

    def _deal(self, group: list[int]) -> list[list[int]]:
        """A length-sorted group's micro-batches, placed so ranks get long and short ones in turn.

        Micro-batch ``k`` (longest first) goes to rank ``k % world`` on even rounds and
        ``world - 1 - k % world`` on odd ones; position ``a * world + r`` of the result is
        rank ``r``'s ``a``-th, which is what ``next`` serves it. A tail too short for a
        micro-batch, or for one per rank, is left out of the epoch (as without grouping).
        """
        count = len(group) // self.micro
        count -= count % self.world
        pieces = [group[k * self.micro:(k + 1) * self.micro] for k in range(count)]
        world = self.world
        if world == 1:
            return pieces
        per_rank: list[list[list[int]]] = [[] for _ in range(world)]
        for k, piece in enumerate(pieces):
            turn, seat = divmod(k, world)
            per_rank[seat if turn % 2 == 0 else world - 1 - seat].append(piece)
        return [per_rank[r][a] for a in range(count // world) for r in range(world)]

    def next_indices(self) -> list[int]:
        """Record indices of this rank's next micro-batch (a new epoch starts when this one is used up)."""
        if self.offset + self.world > len(self._chunks):
            self.epoch += 1
            self.offset = 0
            self._start_epoch()
        chunk = self._chunks[self.offset + self.rank]
        self.offset += self.world
        return chunk

    def next(self) -> Any:
        """This rank's next micro-batch, encoded in this process (``dataset.batch``)."""
        return self.dataset.batch(self.next_indices())

    def copy(self) -> "DataStream":
        """An independent stream at the same position (what a DataLoader's sampler runs ahead on)."""
        twin = object.__new__(DataStream)
        twin.__dict__.update(self.__dict__)
        twin.generator = torch.Generator()
        twin.generator.set_state(self.generator.get_state())
        return twin

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
                                           "micro": self.micro, "world": self.world, "group": self.group}

    def restore(self, generator_state: torch.Tensor, meta: dict[str, Any]) -> None:
        if (meta.get("micro"), meta.get("world")) != (self.micro, self.world):
            raise ConfigError(
                f"the step checkpoint was written with micro batch {meta.get('micro')} on {meta.get('world')} "
                f"process(es); this run uses {self.micro} on {self.world}",
                hint="resume with the same [train] micro_batch_size and number of processes, or pass --restart")
        if int(meta.get("group", 0)) != self.group:
            raise ConfigError(
                f"the step checkpoint's data order was {_grouping(int(meta.get('group', 0)))}; "
                f"this run's is {_grouping(self.group)}",
                hint="resume with the same prism version and batch sizes, or pass --restart")
        self.generator.set_state(generator_state)
        self.epoch = int(meta["epoch"])
        self._start_epoch()
        self.offset = int(meta["offset"])


def _grouping(group: int) -> str:
    return f"length-grouped by {group} records" if group else "not length-grouped"
