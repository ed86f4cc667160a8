"""What keeps one team from seizing the ownership: comparable probe weights and a share cap.

Both are plain functions applied around the assignment kernels (:mod:`.assign`), never inside
them: :func:`rank_weights` before (it rewrites the probes the kernels read), :func:`cap_shares`
after (it rewrites the map the kernels wrote).

**Rank weights.** The kernels compare ``|F_i^p|`` across teams, so a team that multiplies its
probe by 1e30 wins every element it sent. ``rank_weights`` replaces each value of a team's probe
tensor by its mid-rank among that tensor's values, divided by their count, sign kept: the weights
of every team's tensor are then (close to) evenly spread over (0, 1] whatever the team's scale or
the shape of its distribution. Scaling a probe, or one of its tensors, changes nothing; a team
still chooses *which* elements it ranks high, which is what the probe is for. Ties share their
mid-rank, so a flat probe (every value equal) weighs 1/2 everywhere, not 1. The direction rule
only reads signs of sums of uncontrolled teams' weights, which ranks keep comparable too.

**Share cap.** With ``max_share < 1`` no controllable team owns more than ``floor(max_share x
elements)``. A team over its cap keeps the elements its own (rank) weight values most and releases
the rest (ties broken by a seeded draw); the released elements go to the teams below their caps
at random, in proportion to the room each has left (a seeded multivariate-hypergeometric split,
randomly placed); what no team has room for stays at the base (``NO_OWNER``). The cap is a safety
limit, not a quality lever: released elements lose their probe-based owner.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

import numpy as np
import torch

from medusa_fed.deltas import SparseDelta
from medusa_fed.errors import OwnershipError
from medusa_fed.ownership.candidates import chunk_generator
from medusa_fed.ownership.ownership_map import NO_OWNER, OwnershipMap

logger = logging.getLogger(__name__)


def rank_weights(probe: Mapping[str, SparseDelta]) -> dict[str, SparseDelta]:
    """One team's probe with each tensor's values replaced by ``sign x mid-rank / count``.

    A value of magnitude m in a tensor of n kept values, b of them smaller than m and c equal
    to it, becomes ``sign(value) * (b + (c + 1) / 2) / n``: in (0, 1], the same for every
    scaling of the tensor. Exact zeros stay 0.
    """
    out: dict[str, SparseDelta] = {}
    for name, d in probe.items():
        n = d.values.numel()
        if n == 0:
            out[name] = d
            continue
        mag = d.values.abs().to(torch.float32)
        _, inverse, counts = torch.unique(mag, sorted=True, return_inverse=True, return_counts=True)
        below = torch.cumsum(counts, 0) - counts  # values strictly smaller than each distinct one
        mid = (below.double() + (counts.double() + 1) / 2) / n
        weight = mid.to(torch.float32)[inverse] * torch.sign(d.values.to(torch.float32))
        out[name] = SparseDelta(d.shape, d.indices, weight)
    return out


def cap_shares(
    ownership: OwnershipMap,
    weights: Mapping[str, Mapping[str, SparseDelta]],
    max_share: float,
    seed: int,
) -> OwnershipMap:
    """The map with no team owning more than ``floor(max_share x elements)`` (see the module doc).

    Parameters
    ----------
    ownership : OwnershipMap
        The kernels' map.
    weights : Mapping[str, Mapping[str, SparseDelta]]
        team -> tensor -> the probe weights the map was drawn from (what a capped team keeps
        first); a tensor a team did not send weighs 0.
    max_share : float
        In (0, 1]; 1 = no cap (the map is returned unchanged).
    seed : int
        Seed of the tie-breaks and of the released elements' new owners.
    """
    if not (0.0 < max_share <= 1.0 and math.isfinite(max_share)):
        raise OwnershipError(f"max-share must be in (0, 1], found {max_share}; nothing assigned")
    names = sorted(ownership.owners)
    total = sum(ownership.owners[n].numel() for n in names)
    cap = math.floor(max_share * total)
    counts = ownership.owned_counts()
    over = [t for t in ownership.teams if counts[t] > cap]
    if max_share >= 1.0 or not over:
        return ownership
    owners = {n: ownership.owners[n].clone().reshape(-1) for n in names}
    offsets = np.cumsum([0] + [owners[n].numel() for n in names])
    released: list[torch.Tensor] = []  # global flat positions (tensors in sorted order)
    for team in over:
        tid = ownership.teams.index(team)
        pos, score = [], []
        for i, n in enumerate(names):
            own = torch.nonzero(owners[n] == tid).reshape(-1)
            w = torch.zeros(owners[n].numel(), dtype=torch.float32)
            d = weights.get(team, {}).get(n)
            if d is not None and d.indices.numel():
                w[d.indices] = d.values.abs().to(torch.float32)
            pos.append(own + int(offsets[i]))
            score.append(w[own])
        flat_pos, flat_score = torch.cat(pos), torch.cat(score)
        tie = torch.rand(flat_pos.numel(), generator=chunk_generator(seed, team, 0, "cap"))
        # lowest weight first, ties in a seeded random order: the first `excess` are released
        order = np.lexsort((tie.numpy(), flat_score.numpy()))
        excess = counts[team] - cap
        released.append(flat_pos[torch.from_numpy(order[:excess])])
        counts[team] = cap
    free = torch.sort(torch.cat(released)).values
    room = np.array([max(cap - counts[t], 0) for t in ownership.teams], dtype=np.int64)
    rng = np.random.Generator(np.random.PCG64(seed))
    given = min(int(room.sum()), free.numel())
    split = rng.multivariate_hypergeometric(room, given) if given else np.zeros_like(room)
    drawn = np.concatenate(
        [np.repeat(np.arange(len(room), dtype=np.uint8), split)]
        + [np.full(free.numel() - given, NO_OWNER, dtype=np.uint8)]
    )
    labels = torch.from_numpy(rng.permutation(drawn))
    for i, n in enumerate(names):
        lo, hi = torch.searchsorted(free, torch.tensor([int(offsets[i]), int(offsets[i + 1])]))
        owners[n][free[lo:hi] - int(offsets[i])] = labels[lo:hi]
    capped = OwnershipMap(
        ownership.teams,
        {n: owners[n].view(ownership.owners[n].shape) for n in names},
        ownership.uncontrolled,
    )
    logger.info(
        "assign: max-share %g capped %s at %d elements; %d released, %d left at the base",
        max_share,
        over,
        cap,
        free.numel(),
        free.numel() - given,
    )
    return capped
