"""Ownership assignment (the paper's Algorithm 1, GPA): who owns each parameter element.

Per element p (see :mod:`medusa_fed.ownership.candidates` for the direction rule):

- ``rho = sign(sum over UNCONTROLLED teams of F_i^p)``, 0 when there are none;
- candidates: controllable teams with ``F_i^p != 0`` and ``(rho == 0 or sign(F_i^p) == rho)``,
  weighted by ``|F_i^p|``.

Policies (what picks the owner among the candidates):

- ``"proportional"`` (the paper): draw one candidate with probability ``|F_i^p| / sum``.
- ``"argmax"``: the largest ``|F_i^p|``; ties go to the lowest sorted team name.
- ``"balanced"``: each controllable team ends with its target share of the elements, keeping as
  much probe magnitude as possible (see :mod:`medusa_fed.ownership.balanced`).

Elements with NO candidate. The paper leaves ``randomly_select_one_proportional_to`` undefined when
every proportion is 0. This happens where no controllable team's top-d probe touched p, and also
where candidates exist only AGAINST the direction (every controllable team that moved p opposes the
uncontrolled teams' sum): such elements are treated exactly as "no candidate". Then
``unselected="random"`` (a literal reading: every proportion equal) hands the element to a
controllable team drawn uniformly at random, and ``unselected="frozen"`` gives it ``NO_OWNER``, so
it stays at the base (uncontrolled teams still train it).

Reproducibility: teams and tensors are processed in sorted order; the proportional draw and the
"random" fill of an element read one uniform from a counter-based stream keyed by (seed, tensor
name) at the element's offset (``kernels.counter_uniforms``), so the map depends on neither dict
order, chunk size, thread count nor whether the C kernel or its torch twin ran. (Balanced draws
from generators seeded by (seed, tensor name, chunk index).)
Memory stays near ``k x BLOCK`` floats per thread (chunks run on ``torch.get_num_threads()``
threads) plus the output (one uint8 per element).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Literal, get_args

import torch

from medusa_fed import native
from medusa_fed.deltas import SparseDelta
from medusa_fed.errors import OwnershipError
from medusa_fed.ownership.candidates import (
    BLOCK,
    Candidates,
    build_candidates,
    map_chunks,
    stream_key,
)
from medusa_fed.ownership.kernels import (
    ChunkKernel,
    counter_uniforms,
    native_owners,
    owners_for_chunk,
)
from medusa_fed.ownership.ownership_map import OwnershipMap

logger = logging.getLogger(__name__)

Policy = Literal["proportional", "argmax", "balanced"]
Unselected = Literal["random", "frozen"]
OwnershipUnit = Literal["element", "lora-rank", "row"]
__all__ = ["OwnershipUnit", "Policy", "Unselected", "assign_ownership", "owners_for_chunk"]


def assign_ownership(
    probes: Mapping[str, Mapping[str, SparseDelta]],
    shapes: Mapping[str, tuple[int, ...]],
    controlled: Mapping[str, bool],
    policy: Policy = "proportional",
    unselected: Unselected = "random",
    seed: int = 0,
    shares: Mapping[str, float] | None = None,
    progress: bool = False,
) -> OwnershipMap:
    """Assign one owner to every element of the shared tensors.

    Parameters
    ----------
    probes : Mapping[str, Mapping[str, SparseDelta]]
        team -> tensor name -> top-d probe delta; a tensor a team did not send counts as all-zero.
    shapes : Mapping[str, tuple[int, ...]]
        The shared tensors (the ownership space).
    controlled : Mapping[str, bool]
        Every team in ``probes``; False = uncontrolled (sets the direction, owns nothing).
    policy : Policy (default: "proportional")
        "proportional" (the paper), "argmax" or "balanced".
    unselected : Unselected (default: "random")
        Elements without a candidate: "random" (uniform team) or "frozen" (NO_OWNER).
    seed : int (default: 0)
        Seed of every random draw.
    shares : Mapping[str, float] | None (default: None)
        Target share per controllable team for "balanced" (normalised; None = equal).
    progress : bool (default: False)
        Show a tqdm bar over tensors.

    Returns
    -------
    OwnershipMap
        ``teams`` are the controllable teams sorted by name.

    Raises
    ------
    OwnershipError
        Unknown policy/unselected, inconsistent teams, unknown tensor, shape mismatch, bad shares.
    PayloadError
        A probe delta is malformed (see ``SparseDelta.validate``).
    """
    if policy not in get_args(Policy):
        raise OwnershipError(
            f"unknown policy {policy!r}: expected one of {list(get_args(Policy))}; nothing assigned"
        )
    if unselected not in get_args(Unselected):
        raise OwnershipError(
            f"unknown unselected rule {unselected!r}: expected one of "
            f"{list(get_args(Unselected))}; nothing assigned"
        )
    if shares is not None and policy != "balanced":
        raise OwnershipError(
            f"shares apply only to policy 'balanced', found policy {policy!r}; pass shares=None"
        )
    cands = build_candidates(probes, shapes, controlled)
    if policy == "balanced":
        from medusa_fed.ownership.balanced import assign_balanced

        return assign_balanced(cands, unselected, seed, shares, progress)
    return _assign_independent(cands, policy, unselected, seed, progress)


def _assign_independent(
    cands: Candidates, policy: Policy, unselected: Unselected, seed: int, progress: bool
) -> OwnershipMap:
    """Proportional or argmax: every element decided on its own, chunks on threads. Each chunk
    goes through the fused C kernel (:mod:`medusa_fed.native`) where one is built, else through
    the torch kernels in cache-sized blocks; both give the same owners (the uniforms come from
    a counter-based stream per tensor, so neither the block width nor the chunk size nor the
    thread count changes them)."""
    k = len(cands.teams)
    owners = {n: torch.empty(math.prod(s), dtype=torch.uint8) for n, s in cands.shapes.items()}
    keys = {n: stream_key(seed, n) for n in cands.shapes}
    jobs = [(n, c, s, e) for n in cands.shapes for c, s, e in cands.chunks(n)]
    widest = max((e - s for _n, _c, s, e in jobs), default=1)
    # argmax reads the uniforms only where no team is a candidate under "random"
    draw = policy != "argmax" or unselected == "random"
    lib = native.library()

    def workspace() -> ChunkKernel | None:
        return None if lib is not None else ChunkKernel(k, min(BLOCK, widest))

    def one_chunk(kernel: ChunkKernel | None, job: tuple[str, int, int, int]) -> None:
        name, _c, start, end = job
        if kernel is None:
            assert lib is not None
            native_owners(
                lib,
                cands,
                name,
                start,
                end,
                keys[name],
                policy,
                unselected,
                owners[name][start:end],
            )
            return
        edges = [*range(start, end, BLOCK), end]
        pos = cands.spans(name, edges)
        for j in range(len(edges) - 1):
            lo, hi = edges[j], edges[j + 1]
            w = cands.weights(
                name, lo, hi, kernel.weights, {t: (p[j], p[j + 1]) for t, p in pos.items()}
            )
            u = kernel.u[: hi - lo]
            if draw:
                counter_uniforms(keys[name], lo, hi - lo, out=u)
            kernel.owners(w, u, policy, unselected, out=owners[name][lo:hi])

    map_chunks(jobs, workspace, one_chunk, f"assign ({policy})", progress)
    logger.info("assign: %s over %d tensors, %d teams", policy, len(owners), k)
    shaped = {n: o.view(cands.shapes[n]) for n, o in owners.items()}
    return OwnershipMap(cands.teams, shaped, cands.uncontrolled)
