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
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import torch
from tqdm.auto import tqdm

from medusa_fed.deltas import SparseDelta
from medusa_fed.errors import OwnershipError
from medusa_fed.ownership.ownership_map import check_team_count

J = TypeVar("J")
S = TypeVar("S")
R = TypeVar("R")

CHUNK: int = 1 << 22  # elements per streamed chunk (fixed: balanced's random streams depend on it)
# columns per block of a chunk: any value gives the same owners (every kernel is per column).
# 65536 keeps a block's rows near L2 while the per-op Python cost stays small (measured on 2
# cores, 32.8M elements, k = 4: 16384 / 32767 / 65536 / 262144 columns took 1.9 / 1.5 / 1.1 /
# 1.4 s for argmax on one thread)
BLOCK: int = 1 << 16


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

    def spans(self, name: str, edges: list[int]) -> dict[str, list[int]]:
        """team -> position of each of ``edges`` (sorted flat offsets) in its probe of ``name``:
        the probe entries of ``[edges[j], edges[j + 1])`` are ``[pos[j], pos[j + 1])``. One
        binary search per team for all the blocks of a chunk."""
        out: dict[str, list[int]] = {}
        for team in self.teams + self.uncontrolled:
            d = self.probes[team].get(name)
            if d is None or d.indices.numel() == 0:
                out[team] = [0] * len(edges)
            else:
                out[team] = torch.searchsorted(d.indices, torch.tensor(edges)).tolist()
        return out

    def _slice(
        self, team: str, name: str, start: int, end: int, span: tuple[int, int] | None
    ) -> tuple[torch.Tensor, ...]:
        d = self.probes[team].get(name)
        if d is None or d.indices.numel() == 0:
            empty = torch.empty(0)
            return empty.long(), empty
        if span is None:
            lo, hi = torch.searchsorted(d.indices, torch.tensor([start, end])).tolist()
        else:
            lo, hi = span
        return d.indices[lo:hi] - start, d.values[lo:hi].to(torch.float32)

    def weights(
        self,
        name: str,
        start: int,
        end: int,
        out: torch.Tensor | None = None,
        spans: Mapping[str, tuple[int, int]] | None = None,
    ) -> torch.Tensor:
        """``(k, end - start)`` float32: ``|F_i^p|`` where team i is a candidate for p, else 0.

        ``out`` (k, >= end - start) float32: a buffer reused across chunks (the result is its
        first ``end - start`` columns); None allocates one. ``spans``: team -> the range of its
        probe entries inside ``[start, end)`` (from :meth:`spans`); None searches for it.
        """
        width = end - start

        def span(team: str) -> tuple[int, int] | None:
            return None if spans is None else spans[team]

        rho: torch.Tensor | None = None
        if self.uncontrolled:
            acc = torch.zeros(width, dtype=torch.float32)
            for team in self.uncontrolled:
                loc, val = self._slice(team, name, start, end, span(team))
                acc[loc] += val  # indices are unique within one delta
            rho = torch.sign(acc)
        if out is None:
            w = torch.zeros(len(self.teams), width, dtype=torch.float32)
        else:
            w = out[:, :width]
            w.zero_()
        for i, team in enumerate(self.teams):
            loc, val = self._slice(team, name, start, end, span(team))
            if rho is not None:
                r = rho[loc]
                keep = (r == 0) | (torch.sign(val) == r)
                loc, val = loc[keep], val[keep]
            w[i].index_copy_(0, loc, val.abs())  # unique indices: a plain copy, 2x index_put
        return w


def map_chunks(
    jobs: Sequence[J],
    make_state: Callable[[], S],
    work: Callable[[S, J], R],
    desc: str = "",
    progress: bool = False,
) -> list[R]:
    """``[work(state, job) for job in jobs]`` on ``torch.get_num_threads()`` threads, in order.

    Each thread builds its own ``state`` (buffers) once. Chunks are independent (own random
    stream, own output slice), so the results equal a serial run's; torch ops release the GIL,
    so the threads' arithmetic overlaps (the Python between ops does not: measured 15-30% faster
    on 2 cores than one thread).
    """
    workers = min(torch.get_num_threads(), len(jobs))
    bar = tqdm(total=len(jobs), desc=desc, disable=not progress)
    try:
        if workers <= 1:
            state = make_state()
            results = []
            for job in jobs:
                results.append(work(state, job))
                bar.update()
            return results
        local = threading.local()

        def task(job: J) -> R:
            if not hasattr(local, "state"):
                local.state = make_state()
            return work(local.state, job)

        with ThreadPoolExecutor(workers, thread_name_prefix="assign") as pool:
            results = []
            for r in pool.map(task, jobs):
                results.append(r)
                bar.update()
            return results
    finally:
        bar.close()


def _key64(*parts: object) -> int:
    """A 64-bit key from the parts (blake2b of their text, NUL-separated): stable everywhere."""
    h = hashlib.blake2b("\x00".join(map(str, parts)).encode(), digest_size=8)
    return int.from_bytes(h.digest(), "little")


def chunk_generator(seed: int, name: str, chunk: int, salt: str = "") -> torch.Generator:
    """A CPU generator seeded from (seed, tensor name, chunk index, salt) only."""
    return torch.Generator().manual_seed(_key64(seed, name, chunk, salt) >> 1)


def stream_key(seed: int, name: str, salt: str = "") -> int:
    """The 64-bit key of a counter-based random stream of (seed, tensor name, salt) only."""
    return _key64(seed, name, salt)


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
