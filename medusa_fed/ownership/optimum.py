"""The exact optimum of the ownership MILP on small instances: the yardstick for the policies.

Objective (the *kept magnitude*): ``sum |F_i^p|`` over the (team, element) pairs where team i owns p
AND is a candidate for p (the direction rule, :mod:`medusa_fed.ownership.candidates`). Owning an
element one is not a candidate for keeps nothing. Constraints: at most one owner per element; with
``balanced=True`` also the capacities of :func:`medusa_fed.ownership.balanced.capacities` (team i
owns exactly ``c_i`` elements). Solved with ``scipy.optimize.milp`` (HiGHS) over candidate pairs
only; elements the solver leaves free are filled deterministically (they keep nothing, so the
objective does not depend on the fill).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import LinearConstraint, milp
from scipy.sparse import csr_array, vstack

from medusa_fed.deltas import SparseDelta
from medusa_fed.errors import OwnershipError
from medusa_fed.ownership.assign import Unselected
from medusa_fed.ownership.balanced import capacities
from medusa_fed.ownership.candidates import Candidates, build_candidates
from medusa_fed.ownership.ownership_map import NO_OWNER, OwnershipMap

MAX_PAIRS: int = 200_000  # candidate (team, element) pairs the exact solver accepts


@dataclass(frozen=True)
class Optimum:
    """An optimal assignment and its kept magnitude.

    ownership : OwnershipMap
        The optimal map.
    objective : float
        Kept magnitude (see module docstring).
    """

    ownership: OwnershipMap
    objective: float


def _dense_weights(cands: Candidates) -> torch.Tensor:
    """Candidate weights of all tensors side by side, (k, total elements), sorted tensor order."""
    parts = [cands.weights(n, s, e) for n in cands.shapes for _c, s, e in cands.chunks(n)]
    return torch.cat(parts, dim=1) if parts else torch.zeros(len(cands.teams), 0)


def optimal_assignment(
    probes: Mapping[str, Mapping[str, SparseDelta]],
    shapes: Mapping[str, tuple[int, ...]],
    controlled: Mapping[str, bool],
    balanced: bool = False,
    unselected: Unselected = "random",
    shares: Mapping[str, float] | None = None,
    max_pairs: int = MAX_PAIRS,
) -> Optimum:
    """Solve the ownership MILP exactly (small instances only).

    Parameters
    ----------
    probes, shapes, controlled :
        As for :func:`medusa_fed.ownership.assign.assign_ownership`.
    balanced : bool (default: False)
        Add the capacity constraints of policy "balanced".
    unselected : Unselected (default: "random")
        Elements without a candidate: filled ("random") or NO_OWNER ("frozen"); also sets what the
        capacities count, as for "balanced".
    shares : Mapping[str, float] | None (default: None)
        Target shares when ``balanced`` (None = equal).
    max_pairs : int (default: 200_000)
        Refuse instances with more candidate pairs than this.
    """
    cands = build_candidates(probes, shapes, controlled)
    w = _dense_weights(cands)
    k, n = w.shape
    team_idx, elem_idx = (w > 0).nonzero(as_tuple=True)
    pairs = team_idx.numel()
    if pairs > max_pairs:
        raise OwnershipError(
            f"instance too big for the exact solver: {pairs:,} candidate pairs, limit "
            f"{max_pairs:,}; use a smaller instance (or raise max_pairs and wait)"
        )
    has = (w > 0).any(0)
    cap = capacities(cands.teams, shares, n if unselected == "random" else int(has.sum()))
    ones = np.ones(pairs)
    rows = [csr_array((ones, (elem_idx.numpy(), np.arange(pairs))), shape=(n, pairs))]
    upper = [np.ones(n)]
    if balanced:
        rows.append(csr_array((ones, (team_idx.numpy(), np.arange(pairs))), shape=(k, pairs)))
        upper.append(cap.numpy().astype(float))
    a = vstack(rows).tocsr()
    vals = w[team_idx, elem_idx].double().numpy()
    res = milp(
        -vals,
        integrality=np.ones(pairs),
        bounds=(0, 1),
        constraints=LinearConstraint(a, -np.inf, np.concatenate(upper)),
    )
    if not res.success:
        raise OwnershipError(f"exact solver failed: {res.message}; no optimum available")
    chosen = torch.from_numpy(res.x > 0.5)
    flat = torch.full((n,), -1, dtype=torch.int64)
    flat[elem_idx[chosen]] = team_idx[chosen]
    _fill(flat, has, cap, balanced, unselected, k)
    owners, start = {}, 0
    for name, shape in cands.shapes.items():
        size = math.prod(shape)
        owners[name] = flat[start : start + size].to(torch.uint8).view(shape)
        start += size
    omap = OwnershipMap(cands.teams, owners, cands.uncontrolled)
    return Optimum(omap, float(vals[res.x > 0.5].sum()))


def _fill(
    flat: torch.Tensor, has: torch.Tensor, cap: torch.Tensor, balanced: bool, unsel: str, k: int
) -> None:
    """Give free elements an owner: remaining capacities in team order, else round robin."""
    free = flat < 0
    if unsel == "frozen":
        flat[free & ~has] = NO_OWNER
        free &= has
    spots = free.nonzero().squeeze(1)
    if balanced:
        left = cap - torch.bincount(flat[(flat >= 0) & (flat < k)], minlength=k)
        flat[spots] = torch.repeat_interleave(torch.arange(k), left.clamp(min=0))[: spots.numel()]
    else:
        flat[spots] = torch.arange(spots.numel()) % k


def assignment_objective(
    ownership: OwnershipMap, probes: Mapping[str, Mapping[str, SparseDelta]]
) -> float:
    """Kept magnitude of any map: ``sum |F_owner^p|`` where the owner is a candidate for p."""
    controlled = {t: True for t in ownership.teams}
    controlled.update({t: False for t in ownership.uncontrolled})
    shapes = {n: tuple(o.shape) for n, o in ownership.owners.items()}
    cands = build_candidates(probes, shapes, controlled)
    row = torch.tensor([cands.teams.index(t) for t in ownership.teams] + [0], dtype=torch.long)
    total = 0.0
    for name in cands.shapes:
        ids = ownership.owners[name].reshape(-1).long()
        for _c, start, end in cands.chunks(name):
            w = cands.weights(name, start, end)
            o = ids[start:end]
            owned = o != NO_OWNER
            kept = w[:, owned].gather(0, row[o[owned]].unsqueeze(0))  # map id -> sorted row
            total += float(kept.double().sum())
    return total
