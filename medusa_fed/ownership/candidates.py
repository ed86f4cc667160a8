"""Candidate owners of each element: the direction rule of the paper's Algorithm 1 (lines 5-10).

For element p, the direction is ``rho = sign(sum of F_i^p over UNCONTROLLED teams)`` (0 when there
are none). Controllable team i is a *candidate* with weight ``|F_i^p|`` when ``F_i^p != 0`` and
``rho == 0 or sign(F_i^p) == rho``; every other (team, element) pair has weight 0.

Weights are built per chunk of a tensor (``CHUNK`` elements) as a dense ``(k, chunk)`` float32
matrix, so memory stays near ``k x CHUNK`` whatever the model size. Random draws are seeded per
(seed, tensor name, chunk index), so results do not depend on the order of tensors or teams.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch

from medusa_fed.deltas import SparseDelta
from medusa_fed.errors import OwnershipError
from medusa_fed.ownership.ownership_map import check_team_count

CHUNK: int = 1 << 22  # elements per streamed chunk (fixed: the random stream depends on it)


@dataclass(frozen=True)
class Candidates:
    """Validated probe deltas, ready to be turned into candidate weights chunk by chunk.

    teams : tuple[str, ...]
        Controllable teams, sorted; row i of every weight matrix is ``teams[i]``.
    uncontrolled : tuple[str, ...]
        Uncontrolled teams, sorted; they only set the direction.
    shapes : dict[str, tuple[int, ...]]
        The shared tensors, sorted by name (the streaming order).
    probes : Mapping[str, Mapping[str, SparseDelta]]
        team -> tensor name -> top-d probe delta (a missing tensor means an all-zero probe).
    """

    teams: tuple[str, ...]
    uncontrolled: tuple[str, ...]
    shapes: dict[str, tuple[int, ...]]
    probes: Mapping[str, Mapping[str, SparseDelta]]

    def chunks(self, name: str) -> Iterator[tuple[int, int, int]]:
        """``(chunk_index, start, end)`` flat ranges covering tensor ``name``."""
        n = math.prod(self.shapes[name])
        for c, start in enumerate(range(0, n, CHUNK)):
            yield c, start, min(n, start + CHUNK)

    def _slice(self, team: str, name: str, start: int, end: int) -> tuple[torch.Tensor, ...]:
        d = self.probes[team].get(name)
        if d is None or d.indices.numel() == 0:
            empty = torch.empty(0)
            return empty.long(), empty
        lo, hi = torch.searchsorted(d.indices, torch.tensor([start, end])).tolist()
        return d.indices[lo:hi] - start, d.values[lo:hi].to(torch.float32)

    def weights(
        self, name: str, start: int, end: int, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(k, end - start)`` float32: ``|F_i^p|`` where team i is a candidate for p, else 0.

        ``out`` (k, >= end - start) float32: a buffer reused across chunks (the result is its
        first ``end - start`` columns); None allocates one.
        """
        width = end - start
        rho: torch.Tensor | None = None
        if self.uncontrolled:
            acc = torch.zeros(width, dtype=torch.float32)
            for team in self.uncontrolled:
                loc, val = self._slice(team, name, start, end)
                acc[loc] += val  # indices are unique within one delta
            rho = torch.sign(acc)
        if out is None:
            w = torch.zeros(len(self.teams), width, dtype=torch.float32)
        else:
            w = out[:, :width]
            w.zero_()
        for i, team in enumerate(self.teams):
            loc, val = self._slice(team, name, start, end)
            if rho is not None:
                r = rho[loc]
                keep = (r == 0) | (torch.sign(val) == r)
                loc, val = loc[keep], val[keep]
            w[i, loc] = val.abs()
        return w


def chunk_generator(seed: int, name: str, chunk: int, salt: str = "") -> torch.Generator:
    """A CPU generator seeded from (seed, tensor name, chunk index, salt) only."""
    h = hashlib.blake2b(f"{seed}\x00{name}\x00{chunk}\x00{salt}".encode(), digest_size=8)
    return torch.Generator().manual_seed(int.from_bytes(h.digest(), "little") >> 1)


def build_candidates(
    probes: Mapping[str, Mapping[str, SparseDelta]],
    shapes: Mapping[str, tuple[int, ...]],
    controlled: Mapping[str, bool],
) -> Candidates:
    """Validate the assignment inputs and sort teams and tensors; raise OwnershipError if bad."""
    missing = sorted(set(probes) - set(controlled))
    if missing:
        raise OwnershipError(
            f"teams {missing} sent probes but are missing from `controlled`; expected a bool "
            f"(True = controllable) for every team, assignment not started"
        )
    no_probe = sorted(set(controlled) - set(probes))
    if no_probe:
        raise OwnershipError(
            f"teams {no_probe} are in `controlled` but sent no probe; expected one probe per "
            f"team (drop the team from both, or give it an empty probe), assignment not started"
        )
    teams = tuple(sorted(t for t in probes if controlled[t]))
    uncontrolled = tuple(sorted(t for t in probes if not controlled[t]))
    if not teams:
        raise OwnershipError(
            f"no controllable team: all of {sorted(probes)} are uncontrolled; expected at "
            f"least one team that accepts a mask, nothing to assign"
        )
    check_team_count(len(teams))
    shp = {n: tuple(int(x) for x in shapes[n]) for n in sorted(shapes)}
    for team in sorted(probes):
        for name, d in probes[team].items():
            if name not in shp:
                raise OwnershipError(
                    f"team {team!r} sent a probe for unknown tensor {name!r}; expected one of "
                    f"the {len(shp)} shared tensors (e.g. {list(shp)[:3]}), assignment not started"
                )
            if tuple(d.shape) != shp[name]:
                raise OwnershipError(
                    f"team {team!r} probe for {name}: expected shape {shp[name]}, found "
                    f"{tuple(d.shape)}; assignment not started"
                )
            d.validate(f"team {team!r} probe for {name}")
    return Candidates(teams, uncontrolled, shp, probes)
