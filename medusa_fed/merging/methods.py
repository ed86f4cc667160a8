"""One tensor's merged delta under each method (the semantics, stated exactly).

Inputs are the branches that sent this tensor, as ``(branch, fp32 delta)`` pairs **sorted by branch
name**; every sum below runs in that order, in fp32, so the result never depends on dict order.
A branch that did not send the tensor has a zero delta there; it still counts in ``linear``'s mean.

- ``medusa`` (paper Algorithm 3, as ``design.md`` states it):
  ``delta = scale * sum_i delta_i`` on every element at most one branch changed (ownership makes
  controlled branches disjoint, so this is the paper's plain three-way sum). Where an
  *uncontrolled* branch changed the element and more than one branch did: ``rho = sgn(sum_i
  delta_i)``, ``delta = scale * mean{delta_i : sgn(delta_i) = rho}`` (0 if rho = 0). Two
  *controlled* branches changing one element is a broken ownership map: :class:`MergeError`.
  With ``scale = 1`` and disjoint deltas the merge is bit-exactly ``base + sum(deltas)``
  (each element receives exactly one nonzero term, so summation order cannot matter).
- ``linear``: ``delta = sum_i delta_i / n_branches`` (= the average of the tuned models).
- ``task_arithmetic``: ``delta = scale * sum_i delta_i``.
- ``ties``: per branch keep the top-``density`` entries of each tensor by magnitude
  (:mod:`.sparsify`), elect + where the sum of the trimmed deltas is >= 0 (PEFT "total"),
  ``delta = scale * mean{trimmed_i agreeing with the sign, zeros excluded}``.
- ``dare_linear`` / ``dare_task_arithmetic`` / ``dare_ties``: DARE drop + rescale per branch, then
  linear / task arithmetic / TIES's election + disjoint mean (DARE *replaces* the magnitude trim,
  as in PEFT's ``dare_ties``).

PEFT differences: PEFT applies per-branch weights before combining (``mean(w * d)``); we apply one
``scale`` after (``scale * mean(d)``): equal in exact arithmetic, not always bit for bit. PEFT's
``dare_linear`` is a weighted *sum* (our ``dare_task_arithmetic``); our ``dare_linear`` is a mean.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Sequence

import torch

from medusa_fed.errors import MergeError
from medusa_fed.merging.election import disjoint_mean, elect_sign
from medusa_fed.merging.report import TensorReport
from medusa_fed.merging.sparsify import apply_keep, dare_keep_mask, dare_seed, magnitude_keep_mask
from medusa_fed.merging.spec import MergeSpec

Branches = Sequence[tuple[str, torch.Tensor]]


def medusa_delta(
    name: str, deltas: Branches, like: torch.Tensor, scale: float, uncontrolled: Collection[str]
) -> tuple[torch.Tensor, TensorReport]:
    """Algorithm 3 on one tensor: disjoint sum; sign election where uncontrolled overlaps."""
    uncontrolled = frozenset(uncontrolled) & {branch for branch, _ in _names(deltas)}
    if not uncontrolled:
        return _disjoint_sum(name, deltas, like, scale)
    acc = torch.zeros(like.shape, dtype=torch.float32, device=like.device)
    touch = torch.zeros(like.shape, dtype=torch.int16, device=like.device)  # branches per element
    # with uncontrolled branches, track which elements a controlled one changed (to tell a broken
    # ownership map from an overlap to elect); without, any overlap is broken: checked after
    claimed = (
        torch.zeros(like.shape, dtype=torch.bool, device=like.device) if uncontrolled else None
    )
    by_uncontrolled = torch.zeros_like(claimed) if claimed is not None else None
    touched: dict[str, int] = {}
    for branch, d in deltas:
        nz = d != 0
        touched[branch] = int(torch.count_nonzero(nz))
        if by_uncontrolled is not None and branch in uncontrolled:
            by_uncontrolled |= nz
        elif claimed is not None:
            # safety net: ownership must keep controlled branches disjoint
            clash = claimed & nz
            if bool(clash.any()):
                _raise_overlap(name, branch, clash, deltas, uncontrolled)
            claimed |= nz
        touch.add_(nz)
        acc.add_(d)  # the plain three-way sum, in sorted branch order
        del nz, d  # a lazy branch holds one delta at a time
    del claimed
    multi = touch > 1
    overlap = int(torch.count_nonzero(multi))
    if overlap and not uncontrolled:
        _find_overlap(name, deltas, like)  # only controlled branches: some two overlap, name them
    elected = discarded = 0
    if by_uncontrolled is not None and overlap:
        conflict = multi & by_uncontrolled  # bool: elements needing a sign election
        elected = int(torch.count_nonzero(conflict))
        if elected:
            # gather only the conflicting elements: [elected] per branch
            sign = elect_sign(acc[conflict], "medusa")
            mean, count = disjoint_mean((d[conflict] for _, d in deltas), sign)
            acc[conflict] = mean
            discarded = int(torch.count_nonzero(count < touch[conflict]))
    if scale != 1.0:
        acc.mul_(scale)
    return acc, TensorReport(like.numel(), touched, dict(touched), overlap, elected, discarded)


def _disjoint_sum(
    name: str, deltas: Branches, like: torch.Tensor, scale: float
) -> tuple[torch.Tensor, TensorReport]:
    """Only controlled branches: ``scale * sum_i delta_i``, their disjointness checked by counts.

    At an element only one branch changed, the fp32 sum is that branch's value exactly (adding
    zeros is exact), so the sum has as many nonzeros as the branches together; fewer means two
    branches changed one element (a broken ownership map). One finiteness check of the sum covers
    every branch (a NaN/Inf term makes the sum non-finite); only then is each branch checked, to
    name it. Two passes per branch (count, add) and the sum accumulates in the first branch's
    tensor when that one was read for this merge.
    """
    fetch = getattr(deltas, "fetch", None)
    acc: torch.Tensor | None = None
    touched: dict[str, int] = {}
    for i in range(len(deltas)):
        if fetch is not None:
            branch, d, owned = fetch(i, check=False)
        else:
            (branch, d), owned = deltas[i], False
        touched[branch] = _nonzeros(d)
        if acc is None:
            acc = d if owned else d.clone()
        else:
            acc.add_(d)  # the plain sum, in sorted branch order
        del d  # a lazy branch holds one delta at a time
    if acc is None:
        acc = torch.zeros(like.shape, dtype=torch.float32, device=like.device)
    if not bool(torch.isfinite(acc.sum())) and fetch is not None:
        deltas.check_finite()  # type: ignore[attr-defined]  # names a NaN/Inf branch, if any
    if sum(touched.values()) != _nonzeros(acc):
        _find_overlap(name, deltas, like)  # some two branches overlap: name them
    if scale != 1.0:
        acc.mul_(scale)
    return acc, TensorReport(like.numel(), touched, dict(touched), 0, 0, 0)


def _nonzeros(t: torch.Tensor) -> int:
    """Nonzero entries of a float tensor, counted on a bool copy: ``count_nonzero`` on the floats
    branches per element (~6 ns each where zeros and nonzeros mix, as in an owned delta; 2.2 on
    bool, measured on 16M fp32 elements, one thread)."""
    return int(torch.count_nonzero(t != 0))


def _names(deltas: Branches) -> list[tuple[str, None]]:
    """The branch names of ``deltas`` without fetching a lazy branch's tensor."""
    names = getattr(deltas, "branches", None)
    if names is not None:
        return [(b, None) for b in names]
    return [(b, None) for b, _ in deltas]


def _find_overlap(name: str, deltas: Branches, like: torch.Tensor) -> None:
    """Raise the MergeError naming the first two controlled branches that overlap."""
    claimed = torch.zeros(like.shape, dtype=torch.bool, device=like.device)
    for branch, d in deltas:
        nz = d != 0
        clash = claimed & nz
        if bool(clash.any()):
            _raise_overlap(name, branch, clash, deltas, ())
        claimed |= nz


def _raise_overlap(
    name: str, branch: str, clash: torch.Tensor, deltas: Branches, uncontrolled: Collection[str]
) -> None:
    """Name the earlier controlled branch sharing the most elements with ``branch``, and raise."""
    best, best_count = "?", 0
    for other, d in deltas:
        if other == branch:
            break
        if other in uncontrolled:
            continue
        count = int(torch.count_nonzero(clash & (d != 0)))
        if count > best_count:
            best, best_count = other, count
    raise MergeError(
        f"{name}: controlled branches {best!r} and {branch!r} both changed {best_count:,} "
        "element(s); ownership should make controlled branches disjoint (a bad mask?). "
        "Merge aborted, nothing written"
    )


def sparsifier(
    name: str, spec: MergeSpec
) -> Callable[[str, torch.Tensor], tuple[torch.Tensor | None, float | None]]:
    """``(branch, delta) -> (keep mask or None, rescale or None)`` for the spec's sparsify step."""
    kind = spec.info.sparsify

    def keep(branch: str, d: torch.Tensor) -> tuple[torch.Tensor | None, float | None]:
        if kind == "magnitude":
            return magnitude_keep_mask(d, spec.density), None
        if kind == "dare":
            seed = dare_seed(spec.seed, name, branch)
            return dare_keep_mask(d.shape, spec.drop_rate, seed, d.device), 1.0 - spec.drop_rate
        return None, None

    return keep


def baseline_delta(
    name: str, deltas: Branches, like: torch.Tensor, spec: MergeSpec, num_branches: int
) -> tuple[torch.Tensor, TensorReport]:
    """linear / task arithmetic / TIES and their DARE variants on one tensor."""
    info = spec.info
    keep_of = sparsifier(name, spec)
    ties = info.combine == "ties"
    touch = torch.zeros(like.shape, dtype=torch.int16, device=like.device)  # raw: branches/element
    # TIES only: kept nonzero values per element (report); int16, half a tensor
    kept_touch = torch.zeros_like(touch) if ties else None
    touched: dict[str, int] = {}
    kept: dict[str, int] = {}
    masks: list[tuple[torch.Tensor | None, float | None]] = []
    acc = torch.zeros(like.shape, dtype=torch.float32, device=like.device)
    # pass 1: sparsify each branch and sum (for TIES this sum is the election's "total")
    for branch, d in deltas:
        nz = d != 0
        touched[branch] = int(torch.count_nonzero(nz))
        touch.add_(nz)
        del nz
        mask, rescale = keep_of(branch, d)
        sparse = d if mask is None else apply_keep(d, mask, rescale)
        kept_nz = sparse != 0  # counted on bool: ~7x faster than on the floats
        kept[branch] = int(torch.count_nonzero(kept_nz))
        if kept_touch is not None:
            kept_touch.add_(kept_nz)
            masks.append((mask, rescale))  # one byte per element; reused in pass 2
        del kept_nz
        acc.add_(sparse)
        del sparse, mask, d  # a lazy branch holds one delta at a time
    overlap = int(torch.count_nonzero(touch > 1))
    del touch
    elected = discarded = 0
    if info.combine == "mean":
        acc.div_(num_branches)
    elif kept_touch is not None:
        # elect the sign of the sparsified sum, then the disjoint mean of the agreeing values
        sign = elect_sign(acc, "ties")  # int8
        del acc

        def sparsified() -> Iterator[torch.Tensor]:
            for (_, d), (mask, rescale) in zip(deltas, masks, strict=True):
                yield d if mask is None else apply_keep(d, mask, rescale)

        acc, count = disjoint_mean(sparsified(), sign)
        del sign, masks
        elected = int(torch.count_nonzero(kept_touch > 1))
        discarded = int(torch.count_nonzero(count < kept_touch))
    if info.combine != "mean" and spec.scale != 1.0:
        acc.mul_(spec.scale)
    report = TensorReport(like.numel(), touched, kept, overlap, elected, discarded)
    return acc, report
