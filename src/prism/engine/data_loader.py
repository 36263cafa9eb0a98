"""Batches read, decoded and collated by ``torch.utils.data.DataLoader`` workers.

The order of batches is decided here, in the main process (a DataStream for
training, length-sorted chunks for generation); workers only turn index lists
into Batches, so the number of workers never changes what is trained on, and
resuming needs nothing of the workers: the step checkpoint saves the stream's
position, and a new loader starts from it (nothing earlier is replayed).

A record that cannot be loaded (a missing image, one that differs from the
image manifest, ...) raises a PrismError inside a worker; it is sent back as
data and raised again in the main process as the same one-line error, instead
of DataLoader's "Caught DataError in DataLoader worker process 0" traceback.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from prism.errors import PrismError

#: upper bound of the default number of workers per process
MAX_DEFAULT_WORKERS = 8
#: batches each worker prepares ahead of the step loop
PREFETCH_FACTOR = 2


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_num_workers(processes: int = 1, *, cuda: bool = True) -> int:
    """``[train] num_workers`` when unset: on a GPU, this process's share of the CPUs less one
    for the process itself, at most 8; on the CPU, 0 (workers would take cores from the model's
    own threads: measured slower on the tiny CPU demo)."""
    if not cuda:
        return 0
    local = int(os.environ.get("LOCAL_WORLD_SIZE", processes) or processes)
    share = available_cpus() // max(1, local)
    return max(0, min(MAX_DEFAULT_WORKERS, share - 1))


def resolve_num_workers(configured: int | None, processes: int = 1, *, cuda: bool = True) -> int:
    return default_num_workers(processes, cuda=cuda) if configured is None else int(configured)


@dataclass(frozen=True)
class _Failure:
    """A PrismError raised in a worker, as picklable data."""

    kind: type
    message: str
    hint: str | None

    def throw(self) -> None:
        raise self.kind(self.message, hint=self.hint)


class _Samples(torch.utils.data.Dataset):
    """The dataset as workers see it: ``(index, sample)``, or a _Failure instead of raising."""

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        try:
            return index, self.dataset[index]
        except PrismError as exc:
            return _Failure(type(exc), exc.message, exc.hint)


@dataclass(frozen=True)
class _Collate:
    collate: Any

    def __call__(self, items: list[Any]) -> Any:
        for item in items:
            if isinstance(item, _Failure):
                return item
        return [index for index, _ in items], self.collate([sample for _, sample in items])


class _Plan(torch.utils.data.Sampler):
    """A batch sampler over index lists given up front or made on the fly (iterated once)."""

    def __init__(self, batches: Iterable[Sequence[int]]):
        self.batches = batches

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches:
            yield list(batch)


def _seed_worker(worker_id: int) -> None:
    """numpy's RNG from the worker's torch seed (which DataLoader derives from the loader's generator)."""
    import random

    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    try:
        import numpy
    except ImportError:  # pragma: no cover - numpy comes with transformers
        return
    numpy.random.seed(seed)


def load_batches(dataset: Any, batches: Iterable[Sequence[int]], *, num_workers: int = 0,
                 pin_memory: bool = False, seed: int = 0, padding_side: str | None = None,
                 ) -> Iterator[tuple[list[int], Any]]:
    """``(indices, Batch)`` for each index list of ``batches``, in that order.

    ``dataset`` is a TaskDataset (``dataset[i]`` encodes record ``i``; ``collator()``
    pads). Workers are seeded from ``seed`` through the loader's own generator, so
    the global torch RNG (dropout, the step checkpoint's RNG state) is never drawn
    from. Workers live until the iterator is exhausted or closed.
    """
    from torch.utils.data import DataLoader

    if num_workers > 0:
        # the lengths were tokenised in a batch (in parallel); forking after that makes
        # tokenizers print a warning in every worker unless this is set
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    loader = DataLoader(
        _Samples(dataset), batch_sampler=_Plan(batches), collate_fn=_Collate(dataset.collator(padding_side)),
        num_workers=num_workers, pin_memory=pin_memory,
        prefetch_factor=PREFETCH_FACTOR if num_workers > 0 else None,
        persistent_workers=num_workers > 0, worker_init_fn=_seed_worker if num_workers > 0 else None,
        generator=torch.Generator().manual_seed(seed))
    iterator = iter(loader)
    try:
        for item in iterator:
            if isinstance(item, _Failure):
                item.throw()
            yield item
    finally:
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        del iterator


def _endless(stream: Any) -> Iterator[list[int]]:
    while True:
        yield stream.next_indices()


class MicroBatchLoader:
    """This rank's micro-batches in DataStream's order, prepared ahead by DataLoader workers.

    ``next()`` advances ``stream`` (the position a step checkpoint saves: what the step
    loop consumed) and returns the batch the workers made for it; the workers' sampler
    runs ahead on a copy of the stream, taken when the first batch is asked for, so a
    restored stream starts the loader where it left off. One DataLoader iterator
    serves every epoch (the stream is endless): workers persist across epochs.
    """

    def __init__(self, stream: Any, *, num_workers: int = 0, pin_memory: bool = False, seed: int = 0):
        self.stream = stream
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.seed = seed
        self._batches: Iterator[tuple[list[int], Any]] | None = None

    def next(self) -> Any:
        if self._batches is None:
            self._batches = load_batches(self.stream.dataset, _endless(self.stream.copy()),
                                         num_workers=self.num_workers, pin_memory=self.pin_memory, seed=self.seed)
        expected = self.stream.next_indices()
        indices, batch = next(self._batches)
        if indices != list(expected):  # the sampler and the stream run the same plan
            raise RuntimeError(f"data loader out of step: served {indices[:8]}, expected {list(expected)[:8]}")
        return batch

    def close(self) -> None:
        """Stop the workers (idempotent)."""
        if self._batches is not None:
            self._batches.close()
            self._batches = None

    def __enter__(self) -> "MicroBatchLoader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
