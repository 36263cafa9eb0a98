"""SAME's step statistics of every layer folded at once (``SAME.on_gradients``).

Routers that read one input (q/k/v, gate/up) see the same rows every step, so their task sketches
stay equal: each distinct update is computed once, the Gram-based ones of one width in a single
batched eigendecomposition, and the principal subspaces in one batch with one host sync. Sharing
is decided by comparing the tensors themselves, so the results are those of one router at a time.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from prism.methods.spectral import dense_sketch, principals, sketch, smoothed_inverse

#: a router's step: (the step's input sketches ``[d, m]``, its Gram matrix or None)
Step = tuple[Tensor, "Tensor | None"]


@torch.no_grad()
def fold(routers: list[Any], steps: list[Step], energy: float, window: int) -> list[tuple[Tensor, Tensor] | None]:
    """Update every router's task sketch with its step; returns each router's (U, rescaling) of the
    router-gradient projection (None: no principal subspace yet). Counts must already include the step."""
    groups = equal_updates(routers, steps)
    heads = [routers[group[0]] for group in groups]
    dense: dict[tuple, list[int]] = {}
    for index, (router, (local, gram)) in enumerate(zip(heads, (steps[group[0]] for group in groups))):
        current = router.task_sketch
        if gram is not None:
            dense.setdefault((current.shape, current.device), []).append(index)
        elif local.shape[1]:
            current.copy_(sketch(torch.cat([current, local.to(current.device)], dim=1).T, router.q))
    for indices in dense.values():  # one eigendecomposition per input width
        factors = torch.stack([heads[i].task_sketch for i in indices])
        grams = torch.stack([steps[groups[i][0]][1].to(factors.device) for i in indices])
        updated = dense_sketch(torch.baddbmm(grams, factors, factors.mT), heads[indices[0]].q)
        for i, new in zip(indices, updated):
            heads[i].task_sketch.copy_(new)
    out: list[tuple[Tensor, Tensor] | None] = [None] * len(routers)
    by_shape: dict[tuple, list[int]] = {}
    for index, router in enumerate(heads):
        by_shape.setdefault((router.task_sketch.shape, router.task_sketch.device), []).append(index)
    for indices in by_shape.values():
        found = principals(torch.stack([heads[i].task_sketch for i in indices]),
                           torch.stack([heads[i].task_count for i in indices]), energy)
        for i, (u, s) in zip(indices, found):
            subspace = (u, smoothed_inverse(s, window)) if u.shape[1] else None
            for member in groups[i]:
                out[member] = subspace
                if member != groups[i][0]:
                    routers[member].task_sketch.copy_(heads[i].task_sketch)
    return out


def equal_updates(routers: list[Any], steps: list[Step]) -> list[list[int]]:
    """The routers as groups of indices whose update is one computation: equal sketches, counts and step
    statistics (the inputs seen this step only say which routers to compare)."""
    hints: dict[tuple, list[int]] = {}
    for index, router in enumerate(routers):
        key = (router.step_history, router.task_sketch.shape, router.task_sketch.device)
        hints.setdefault(key, []).append(index)
    groups: list[list[int]] = []
    for indices in hints.values():
        found: list[list[int]] = []
        for index in indices:
            group = next((g for g in found if _equal(routers[g[0]], steps[g[0]], routers[index], steps[index])), None)
            if group is None:
                found.append([index])
            else:
                group.append(index)
        groups.extend(found)
    return groups


def _equal(a: Any, step_a: Step, b: Any, step_b: Step) -> bool:
    def same(x: Tensor | None, y: Tensor | None) -> bool:
        return x is y or (x is not None and y is not None and x.shape == y.shape and torch.equal(x, y))

    return (same(a.task_sketch, b.task_sketch) and same(a.task_count, b.task_count)
            and same(step_a[0], step_b[0]) and same(step_a[1], step_b[1]))


def rows_of(tensors: list[Tensor], fn: Callable[[Tensor], Tensor]) -> list[list]:
    """``fn`` of the stacked tensors, row by row as Python lists: one host transfer per device."""
    out: list[list] = [[] for _ in tensors]
    by_device: dict[Any, list[int]] = {}
    for index, tensor in enumerate(tensors):
        by_device.setdefault(tensor.device, []).append(index)
    for indices in by_device.values():
        for index, row in zip(indices, fn(torch.stack([tensors[i] for i in indices])).tolist()):
            out[index] = row
    return out
