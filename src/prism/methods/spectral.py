"""Low-rank covariance sketches of layer inputs (SAME's online input statistics).

A sketch is a ``[d, q]`` factor F whose columns are orthogonal and in descending norm, with
F Fᵀ ≈ Xᵀ X over every input row seen: exact (from the d × d Gram matrix) for narrow layers,
a randomised range finder for wide ones, so memory stays O(d·q) whatever the data.
"""

from __future__ import annotations

import itertools
import weakref
from dataclasses import dataclass

import torch
from torch import Tensor

def sketch(rows: Tensor, q: int) -> Tensor:
    """A ``[d, q]`` factor F with F Fᵀ ≈ rowsᵀ rows: the rows' top-q directions scaled by their singular
    values (zero columns where there are fewer; they add nothing to F Fᵀ, and keep the shape fixed)."""
    rows = rows.float()
    out = rows.new_zeros(rows.shape[1], q)
    if rows.shape[0] == 0:
        return out
    width = q + 8
    if min(rows.shape) > 2 * width:  # a randomised range finder (Halko et al.): O(m·d·q), not O(m·d·min(m, d))
        probe = torch.randn(rows.shape[1], width, generator=torch.Generator().manual_seed(0)).to(rows.device)
        basis = rows @ probe
        for _ in range(2):  # power iterations sharpen the top directions
            basis = rows @ (rows.T @ torch.linalg.qr(basis).Q)
        rows = torch.linalg.qr(basis).Q.T @ rows  # [width, d], the same top singular values and directions
    _, s, vh = torch.linalg.svd(rows, full_matrices=False)
    k = min(q, s.shape[0])
    out[:, :k] = vh[:k].T * s[:k]
    return out


def principal(factor: Tensor, count: float, energy: float) -> tuple[Tensor, Tensor]:
    """(U ``[d, k]``, S ``[k]``) of the covariance F Fᵀ / count: the directions holding ``energy`` of it,
    S the standard deviation of the inputs along each. ``factor`` is a sketch: orthogonal columns in
    descending norm (``sketch`` and ``dense_sketch`` make them so), so no decomposition is needed."""
    norms = factor.norm(dim=0)
    kept = int((norms > 0).sum())
    variance = norms[:kept] ** 2 / max(float(count), 1.0)
    total = float(variance.sum())
    if kept == 0 or total <= 0:
        return factor[:, :0], variance[:0]
    ratio = torch.cumsum(variance, 0) / total
    k = min(int((ratio < energy).sum()) + 1, kept)
    return factor[:, :k] / norms[:k], variance[:k].sqrt()


def principals(factors: Tensor, counts: Tensor, energy: float) -> list[tuple[Tensor, Tensor]]:
    """``principal`` of each sketch in ``factors`` ``[n, d, q]`` (``counts`` ``[n]``) at once: the same
    subspaces, with one host sync for the batch instead of four per sketch."""
    norms = factors.norm(dim=1)
    variance = norms.pow(2) / counts.to(norms).clamp_min(1.0).unsqueeze(-1)
    total = variance.sum(-1, keepdim=True)
    ratio = torch.cumsum(variance, -1) / total
    kept = (norms > 0).sum(-1)
    sizes = torch.where(total.squeeze(-1) > 0, torch.minimum((ratio < energy).sum(-1) + 1, kept), 0).tolist()
    return [(factor[:, :k] / norm[:k], var[:k].sqrt()) for factor, norm, var, k in zip(factors, norms, variance, sizes)]


def smoothed_inverse(s: Tensor, window: int) -> Tensor:
    """SAME's router rescaling along principal directions of standard deviations ``s``: the inverse of each
    value's trailing-window mean, normalised so the largest (the weakest direction's) is 1."""
    padded = torch.nn.functional.pad(s, (window - 1, 0))  # zeros before the first: a shorter window there
    sizes = torch.arange(1, s.shape[-1] + 1, device=s.device).clamp_max(window)
    inverse = 1.0 / (padded.unfold(-1, window, 1).sum(-1) / sizes).clamp_min(1e-12)
    return inverse / inverse.max()


def dense_sketch(gram: Tensor, q: int) -> Tensor:
    """The ``[..., d, q]`` sketch of Gram matrices Xᵀ X ``[..., d, d]`` (top-q eigenvectors scaled by
    √eigenvalue, descending)."""
    values, vectors = torch.linalg.eigh(gram.float())
    top = values.flip(-1)[..., :q].clamp_min(0)
    out = gram.new_zeros(*gram.shape[:-1], q)
    out[..., : top.shape[-1]] = (vectors.flip(-1)[..., :q] * top.sqrt().unsqueeze(-2)).to(gram.dtype)
    return out


#: below this input width the inputs' Gram matrix (d × d) is kept exactly between steps
DENSE_WIDTH = 2048


def reduce_step(local: Tensor, gram: Tensor | None, tokens: Tensor, gate: Tensor, energy: Tensor, width: int):
    """Every process's step statistics combined: Gram matrices and sums added, sketches gathered."""
    import torch.distributed as dist

    world = dist.get_world_size()
    if width <= DENSE_WIDTH:
        gram = gram if gram is not None else local.new_zeros(width, width)
        dist.all_reduce(gram)
    else:
        columns = torch.tensor([local.shape[1]], device=local.device)
        counts = [torch.zeros_like(columns) for _ in range(world)]
        dist.all_gather(counts, columns)
        padded = local.new_zeros(local.shape[0], int(max(int(c) for c in counts)))
        padded[:, : local.shape[1]] = local
        gathered = [torch.zeros_like(padded) for _ in range(world)]
        dist.all_gather(gathered, padded)
        local = torch.cat(gathered, dim=1)
    sums = torch.cat([tokens.float(), gate.float(), energy.float()])
    dist.all_reduce(sums)
    experts = gate.shape[0]
    return local, gram, sums[:1], sums[1:1 + experts], sums[1 + experts:]


_serials = itertools.count()


@dataclass
class InputStats:
    """One layer input's statistics in one forward, shared by every router reading that tensor (q/k/v and
    gate/up read one input each): its Gram matrix (or sketch) and row norms are computed once, not per router."""

    serial: int  # which input, so routers that saw the same inputs can be told apart from others
    tokens: float
    keep: Tensor | None  # the rows the attention mask keeps (None: all)
    sq: Tensor  # ‖x‖² of each kept row
    gram: Tensor | None  # Xᵀ X of the kept rows (inputs of at most DENSE_WIDTH features)
    sketch: Tensor | None  # their rank-q sketch (wider inputs)


@torch.no_grad()
def input_stats(x: Tensor, mask: Tensor | None, q: int, cache: dict | None) -> InputStats:
    """The statistics of ``x``'s (unmasked) rows, from ``cache`` when another router already read this
    very tensor in this forward (checked by identity and version, held by a weak reference)."""
    key = f"same_input_{id(x)}_{q}"
    entry = cache.get(key) if cache is not None else None
    if entry is not None and entry[0]() is x and entry[1] == x._version and entry[2] is mask:
        return entry[3]
    rows = x.detach().reshape(-1, x.shape[-1]).float()
    keep = None
    if mask is not None:
        keep_rows = mask[:, -x.shape[1]:].reshape(-1).bool().to(rows.device)
        if not bool(keep_rows.all()):
            keep = keep_rows.nonzero().squeeze(-1)
            rows = rows.index_select(0, keep)
    dense = rows.shape[1] <= DENSE_WIDTH
    stats = InputStats(serial=next(_serials), tokens=float(rows.shape[0]), keep=keep, sq=rows.pow(2).sum(-1),
                       gram=rows.T @ rows if dense else None, sketch=None if dense else sketch(rows, q))
    if cache is not None:
        cache[key] = (weakref.ref(x), x._version, mask, stats)
    return stats
