"""Balanced ownership: every controllable team gets its target share, keeping probe magnitude.

The problem is a transportation LP: maximise the kept candidate weight ``sum w[i, p] x[i, p]``
subject to one owner per element and ``c_i`` elements per team. Its dual has one price
``lambda_i >= 0`` per team, and an optimal primal assigns p to ``argmax_i (w[i, p] - lambda_i)``
when that is positive. We stream it in three passes, memory near ``k x CHUNK``:

1. **Sample.** Count the elements to hand out (all of them under ``unselected="random"``, only
   those with a candidate under ``"frozen"``), set capacities ``c_i`` from the shares (largest
   remainder, so they sum exactly), and keep a seeded uniform sample of at most ``SAMPLE`` columns
   of the candidate weights (all of them on small models).
2. **Price, then assign.** Solve the prices on the sample by exact block-coordinate ascent (team i's
   price is set so that exactly its scaled capacity prefers it, holding the others fixed; sweeps
   until stable), then give every element to ``argmax_i (w - lambda_i)`` if positive. A team that
   reaches its capacity (sampling error) keeps only its highest-margin elements of that chunk;
   tensors run in sorted order so this is deterministic.
3. **Fill.** Elements left over (no candidate, or priced out) fill the remaining capacities exactly:
   per tensor, a seeded multivariate-hypergeometric split of the leftovers, randomly placed.
   Under ``"frozen"`` elements with no candidate get ``NO_OWNER`` and are not counted.

Every team ends with exactly ``c_i`` elements. :mod:`medusa_fed.ownership.optimum` measures how
close the kept weight gets to the MILP optimum (tests/unit/test_ownership_optimum.py).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

import numpy as np
import torch
from tqdm.auto import tqdm

from medusa_fed.errors import OwnershipError
from medusa_fed.ownership.candidates import CHUNK, Candidates, chunk_generator
from medusa_fed.ownership.kernels import ChunkKernel, priced_argmax, select_u8
from medusa_fed.ownership.ownership_map import NO_OWNER, OwnershipMap

logger = logging.getLogger(__name__)

SAMPLE: int = 1 << 19  # candidate columns used to solve the prices
MAX_SWEEPS: int = 60  # coordinate-ascent sweeps over the teams
_LEFTOVER = 254  # internal marker between passes 2 and 3 (never a team id: at most 254 teams)


def capacities(
    teams: tuple[str, ...], shares: Mapping[str, float] | None, total: int
) -> torch.Tensor:
    """Elements per team (int64, sums to ``total``): shares normalised, largest remainder."""
    if shares is None:
        frac = torch.full((len(teams),), 1.0 / len(teams), dtype=torch.float64)
    else:
        if set(shares) != set(teams):
            raise OwnershipError(
                f"shares must name exactly the controllable teams {list(teams)}, found "
                f"{sorted(shares)}; nothing assigned"
            )
        vals = [float(shares[t]) for t in teams]
        if not all(math.isfinite(v) and v >= 0 for v in vals) or sum(vals) <= 0:
            raise OwnershipError(
                f"shares must be finite, >= 0 and not all zero, found {dict(shares)}; "
                f"nothing assigned"
            )
        frac = torch.tensor(vals, dtype=torch.float64) / sum(vals)
    exact = frac * total
    cap = exact.floor().long()
    order = torch.argsort(exact - cap, descending=True, stable=True)
    cap[order[: total - int(cap.sum())]] += 1
    return cap


def solve_prices(ws: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Team prices such that about ``targets[i]`` sample columns prefer team i.

    ``ws`` (k, m) holds candidate weights (0 = not a candidate). Block-coordinate ascent on the
    dual: team i's price becomes the (t_i+1)-th largest margin ``w_i - max(0, best other)``.
    """
    k, m = ws.shape
    lam = torch.zeros(k, dtype=torch.float32)
    cand = ws > 0
    for _sweep in range(MAX_SWEEPS):
        prev = lam.clone()
        for i in range(k):
            score = torch.where(cand, ws - lam[:, None], -torch.inf)
            score[i] = -torch.inf
            other = score.max(0).values.clamp_(min=0.0) if k > 1 else torch.zeros(m)
            margin = torch.where(cand[i], ws[i] - other, -torch.inf)
            t = int(targets[i])
            if int((margin > 0).sum()) <= t:
                lam[i] = 0.0
            else:
                lam[i] = torch.topk(margin, t + 1).values[-1]
        if torch.equal(lam, prev):
            break
    return lam


def _any_candidate(w: torch.Tensor) -> torch.Tensor:
    """Columns of ``w`` (k, n) with a positive weight (row loop: dim-0 reductions are slow)."""
    has = w[0] > 0
    for i in range(1, w.shape[0]):
        has |= w[i] > 0
    return has


def assign_balanced(
    cands: Candidates,
    unselected: str,
    seed: int,
    shares: Mapping[str, float] | None,
    progress: bool,
) -> OwnershipMap:
    """Capacity-constrained assignment (see module docstring); teams end with exact capacities."""
    k = len(cands.teams)
    n_all = sum(math.prod(s) for s in cands.shapes.values())
    frac = min(1.0, SAMPLE / max(n_all, 1))
    # pass 1: count elements with a candidate, sample candidate columns
    n_cand, cols = 0, []
    widest = max((math.prod(s) for s in cands.shapes.values()), default=0)
    kernel = ChunkKernel(k, min(CHUNK, max(widest, 1)))
    for name in tqdm(cands.shapes, desc="balanced: sample", disable=not progress):
        for c, start, end in cands.chunks(name):
            w = cands.weights(name, start, end, out=kernel.weights)
            has = _any_candidate(w)
            n_cand += int(has.sum())
            pick = torch.rand(end - start, generator=chunk_generator(seed, name, c, "sample"))
            cols.append(w[:, has & (pick < frac)])
    cap = capacities(cands.teams, shares, n_all if unselected == "random" else n_cand)
    ws = torch.cat(cols, dim=1) if cols else torch.zeros(k, 0)
    targets = (cap.double() * ws.shape[1] / max(n_cand, 1)).floor().long()
    lam = solve_prices(ws, targets)
    logger.info("balanced: capacities %s, prices %s", cap.tolist(), lam.tolist())
    # pass 2: priced argmax with hard capacities
    left = cap.clone()
    owners: dict[str, torch.Tensor] = {}
    for name in tqdm(cands.shapes, desc="balanced: assign", disable=not progress):
        out = torch.empty(math.prod(cands.shapes[name]), dtype=torch.uint8)
        for _c, start, end in cands.chunks(name):
            w = cands.weights(name, start, end, out=kernel.weights)
            best, owner = priced_argmax(w, lam, kernel)
            n = end - start
            ok = best > 0
            rest, tmp = torch.empty(n, dtype=torch.uint8), torch.empty(n, dtype=torch.uint8)
            rest.fill_(k)
            counts = torch.bincount(select_u8(ok, owner, rest, rest, tmp), minlength=k + 1)[:k]
            for i in (counts > left).nonzero().squeeze(1).tolist():
                # capacity reached (sampling error): keep the highest margins of this chunk
                mine = (ok & (owner == i)).nonzero().squeeze(1)
                drop = torch.topk(best[mine], mine.numel() - int(left[i]), largest=False)
                ok[mine[drop.indices]] = False
                counts[i] = left[i]
            left -= counts
            rest.fill_(_LEFTOVER)
            if unselected == "frozen":
                none = torch.full_like(rest, NO_OWNER)  # no candidate at all
                select_u8(best == -torch.inf, none, rest, rest, tmp)
            select_u8(ok, owner, rest, out[start:end], tmp)
        owners[name] = out
    # pass 3: leftovers fill the remaining capacities exactly
    rng = np.random.default_rng([seed, 0xBA1A])
    for name, out in owners.items():
        spots = (out == _LEFTOVER).nonzero().squeeze(1)
        if spots.numel():
            split = torch.from_numpy(rng.multivariate_hypergeometric(left.numpy(), spots.numel()))
            labels = torch.repeat_interleave(torch.arange(k), split)
            perm = torch.randperm(spots.numel(), generator=chunk_generator(seed, name, 0, "fill"))
            out[spots] = labels[perm].to(torch.uint8)
            left -= split
        owners[name] = out.view(cands.shapes[name])
    return OwnershipMap(cands.teams, owners, cands.uncontrolled)
