"""Synthetic probe deltas for tests and the benchmark (no model, no data needed)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from medusa_fed.deltas import SparseDelta


def synthetic_probe(
    shape: tuple[int, ...], density: float, generator: torch.Generator, scale: float = 1.0
) -> SparseDelta:
    """A top-``density`` probe: ``ceil(density * numel)`` random positions, N(0, scale^2) values.

    Positions are drawn uniformly (not by magnitude) so building 100M-element probes stays cheap;
    for the assignment only the kept positions and their values matter.
    """
    n = math.prod(shape)
    k = min(n, math.ceil(density * n))
    if k == n:
        idx = torch.arange(n, dtype=torch.int64)
    else:  # k distinct positions without a full randperm: oversample, unique, trim
        idx = torch.empty(0, dtype=torch.int64)
        while idx.numel() < k:
            extra = torch.randint(n, (int((k - idx.numel()) * 1.3) + 16,), generator=generator)
            idx = torch.unique(torch.cat([idx, extra]))
        idx = idx[torch.randperm(idx.numel(), generator=generator)[:k]].sort().values
    vals = torch.randn(k, generator=generator) * scale
    vals[vals == 0] = scale  # top-d never keeps exact zeros
    return SparseDelta(tuple(shape), idx, vals)


def synthetic_probes(
    shapes: Mapping[str, tuple[int, ...]],
    teams: Sequence[str],
    density: float = 0.2,
    seed: int = 0,
    scales: Mapping[str, float] | None = None,
) -> dict[str, dict[str, SparseDelta]]:
    """team -> tensor -> synthetic top-``density`` probe; ``scales`` multiplies a team's values.

    Parameters
    ----------
    shapes : Mapping[str, tuple[int, ...]]
        The shared tensors.
    teams : Sequence[str]
        Team names.
    density : float (default: 0.2)
        Kept fraction per tensor.
    seed : int (default: 0)
        Seed of the draw.
    scales : Mapping[str, float] | None (default: None)
        Per-team magnitude factor (None = 1 for all).
    """
    g = torch.Generator().manual_seed(seed)
    return {
        t: {
            n: synthetic_probe(s, density, g, 1.0 if scales is None else scales.get(t, 1.0))
            for n, s in shapes.items()
        }
        for t in teams
    }
