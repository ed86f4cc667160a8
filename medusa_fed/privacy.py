"""The privacy option: a team site clips and noises what it uploads (the Gaussian mechanism).

With ``dp-clip = C > 0`` a site scales each upload (a probe's kept values, a TRAIN round's owned
values, or an uncontrolled team's whole delta) so that its L2 norm is at most ``C``, then adds
independent ``N(0, (dp-noise x C)^2)`` noise to every value it sends. The noise comes from the
operating system's randomness, not from the run's seed: a coordinator that knows the seed could
otherwise subtract it, so runs with noise are not bit-reproducible.

What it protects and what not (docs/threat-model.md): the values. The probe's *indices* (which
elements a team moved most) and its head (``share-head``) travel as before, and the unmasked
branches of compared post-hoc merges and federated anchors are not covered.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping

import torch

from medusa_fed.deltas import SparseDelta, StateDict


def _generator() -> torch.Generator:
    return torch.Generator().manual_seed(secrets.randbits(63))


def clip_and_noise(values: list[torch.Tensor], clip: float, noise: float) -> list[torch.Tensor]:
    """``values`` scaled jointly to L2 norm <= ``clip``, plus N(0, (noise x clip)^2) each."""
    norm = sum(float(v.double().square().sum()) for v in values) ** 0.5
    factor = min(1.0, clip / norm) if norm > 0 else 1.0
    g = _generator()
    std = noise * clip
    return [
        v.float() * factor + (torch.randn(v.shape, generator=g) * std if std > 0 else 0.0)
        for v in values
    ]


def private_probe(
    sparse: Mapping[str, SparseDelta], clip: float, noise: float
) -> dict[str, SparseDelta]:
    """A probe with its kept values clipped and noised (indices unchanged)."""
    names = sorted(sparse)
    out = clip_and_noise([sparse[n].values for n in names], clip, noise)
    pairs = zip(names, out, strict=True)
    return {n: SparseDelta(sparse[n].shape, sparse[n].indices, v) for n, v in pairs}


def private_delta(
    delta: StateDict, mask: Mapping[str, torch.Tensor] | None, clip: float, noise: float
) -> StateDict:
    """A TRAIN delta with the values it uploads (those in ``mask``; all when None) clipped and
    noised; elements outside the mask stay exactly 0 (they are not sent)."""
    names = sorted(delta)
    picks = [mask[n].to(torch.bool) if mask is not None else None for n in names]
    sent = [delta[n][p] if p is not None else delta[n] for n, p in zip(names, picks, strict=True)]
    out: StateDict = {}
    for n, p, v in zip(names, picks, clip_and_noise(sent, clip, noise), strict=True):
        if p is None:
            out[n] = v
        else:
            full = torch.zeros_like(delta[n], dtype=torch.float32)
            full[p] = v
            out[n] = full
    return out
