"""SAME's covariance sketches: the batched principal subspaces and rescaling equal the one-at-a-time
formulas, and an input's statistics are reused only for that very tensor."""

from __future__ import annotations

import torch

from prism.methods.spectral import dense_sketch, input_stats, principal, principals, smoothed_inverse


def sketches(n=4, d=12, q=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    rows = [torch.randn(20, d, generator=gen) * torch.linspace(3, 0.1, d) for _ in range(n)]
    return torch.stack([dense_sketch(r.T @ r, q) for r in rows]), torch.tensor([20.0] * n)


def test_principals_of_a_batch_are_each_sketchs_principal():
    factors, counts = sketches()
    factors[1] = 0  # no data yet: an empty subspace
    factors[2, :, 3:] = 0  # fewer directions than columns
    counts[3] = 0.5  # counts below 1 count as 1
    for energy in (0.5, 0.9, 1.0):
        for factor, count, (u, s) in zip(factors, counts, principals(factors, counts, energy)):
            u_one, s_one = principal(factor, float(count), energy)
            assert u.shape == u_one.shape and torch.allclose(u, u_one) and torch.allclose(s, s_one)


def test_the_router_rescaling_is_the_inverse_trailing_mean_normalised_to_one():
    s = torch.tensor([5.0, 3.0, 2.5, 1.0, 0.7, 0.2])
    for window in (1, 3, 10):
        smooth = torch.stack([s[max(0, i - window + 1): i + 1].mean() for i in range(len(s))])
        expected = (1 / smooth) / (1 / smooth).max()
        assert torch.allclose(smoothed_inverse(s, window), expected)


def test_input_statistics_are_reused_only_for_the_same_unchanged_tensor():
    x = torch.randn(2, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    cache: dict = {}
    stats = input_stats(x, mask, 3, cache)
    rows = x.reshape(-1, 4)[mask.reshape(-1).bool()]
    assert stats.tokens == 8 and torch.allclose(stats.gram, rows.T @ rows)
    assert torch.allclose(stats.sq, rows.pow(2).sum(-1))
    assert input_stats(x, mask, 3, cache) is stats
    assert input_stats(x.clone(), mask, 3, cache) is not stats  # another tensor
    assert input_stats(x, torch.ones(2, 5), 3, cache) is not stats  # another mask
    x.mul_(2)  # changed in place
    assert torch.allclose(input_stats(x, mask, 3, cache).gram, 4 * stats.gram)
