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

from collections.abc import Collection, Sequence
from typing import Any

import torch

from medusa_fed.errors import MergeError
from medusa_fed.merging import fused
from medusa_fed.merging.election import disjoint_mean, elect_sign
from medusa_fed.merging.report import TensorReport
from medusa_fed.merging.sparsify import (
    MagnitudeCut,
    apply_keep,
    dare_keep_mask,
    dare_seed,
    magnitude_trim_,
    trim_,
)
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
    name it. One pass per branch (count and add, :mod:`medusa_fed.merging.fused`), one over the
    sum (its nonzeros and finiteness), and the sum accumulates in the first branch's tensor when
    that one was read for this merge.
    """
    acc: torch.Tensor | None = None
    touched: dict[str, int] = {}
    for i in range(len(deltas)):
        branch, d, owned = _fetch(deltas, i, check=False)
        if acc is None:
            touched[branch] = fused.count_nonzero(d)
            acc = d if owned else d.clone()
        else:
            touched[branch] = fused.add_count_(acc, d)  # the plain sum, in sorted branch order
        del d  # a lazy branch holds one delta at a time
    if acc is None:
        acc = torch.zeros(like.shape, dtype=torch.float32, device=like.device)
    nonzeros, finite = fused.count_nonzero_finite(acc)
    if not finite and hasattr(deltas, "check_finite"):
        deltas.check_finite()  # type: ignore[attr-defined]  # names a NaN/Inf branch, if any
    if sum(touched.values()) != nonzeros:
        _find_overlap(name, deltas, like)  # some two branches overlap: name them
    if scale != 1.0:
        acc.mul_(scale)
    return acc, TensorReport(like.numel(), touched, dict(touched), 0, 0, 0)


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


def _fetch(deltas: Branches, i: int, check: bool = True) -> tuple[str, torch.Tensor, bool]:
    """``(branch, delta, owned)`` of the i-th branch; ``owned``: read for this call, so it may be
    modified in place (see ``_Pairs.fetch``; a plain sequence's tensors are the caller's)."""
    fetch = getattr(deltas, "fetch", None)
    if fetch is not None:
        return fetch(i, check=check)  # type: ignore[no-any-return]
    branch, d = deltas[i]
    return branch, d, False


def _ones(mask: torch.Tensor) -> int:
    """Exact count of the ones in a 0/1 fp32 tensor: summed in chunks of 2**24 elements, so
    every partial sum is an integer fp32 holds exactly."""
    flat = mask.reshape(-1)
    return sum(int(flat[s : s + (1 << 24)].sum()) for s in range(0, flat.numel(), 1 << 24))


def _nonzeros_into(t: torch.Tensor, counter: torch.Tensor | None, scratch: torch.Tensor) -> int:
    """Nonzero entries of ``t``; each adds 1 to ``counter`` (fp32) when given. Compared into the
    fp32 ``scratch``: comparisons with a bool result run 2-3x slower on CPU."""
    torch.ne(t, 0, out=scratch)
    if counter is not None:
        counter.add_(scratch)
    return _ones(scratch)


Step = tuple[MagnitudeCut | None, torch.Tensor | None, float | None]


def _sparsify_step(name: str, spec: MergeSpec, branch: str, d: torch.Tensor) -> Step:
    """How a branch's delta is DARE-sparsified, decided once (pass 1) and replayed in TIES's
    pass 2: ``(None, keep mask, rescale)``, or nothing (the magnitude trim's step is the cut
    :func:`magnitude_trim_` returns)."""
    if spec.info.sparsify == "dare":
        seed = dare_seed(spec.seed, name, branch)
        keep = dare_keep_mask(d.shape, spec.drop_rate, seed, d.device)
        return None, keep, 1.0 - spec.drop_rate
    return None, None, None


def _sparsified(
    spec: MergeSpec, d: torch.Tensor, owned: bool, step: Step, scratch: torch.Tensor
) -> torch.Tensor:
    """The sparsified delta: a tensor the caller may modify, unless nothing is sparsified."""
    cut, keep, rescale = step
    if keep is not None:
        return apply_keep(d, keep, rescale)  # a new tensor
    if spec.info.sparsify != "magnitude":
        return d
    return trim_(d if owned else d.clone(), cut, scratch)


def baseline_delta(
    name: str, deltas: Branches, like: torch.Tensor, spec: MergeSpec, num_branches: int
) -> tuple[torch.Tensor, TensorReport]:
    """linear / task arithmetic / TIES and their DARE variants on one tensor.

    Counts and masks are fp32 (0/1 adds are exact; bool comparisons and selects run 2-5x slower
    on CPU). TIES's disjoint mean works on ``d * sign``: positive exactly where ``d`` agrees with
    the elected sign, so the agreeing values' sum is ``sign * sum(relu(d * sign))`` (the same
    rounding: negation is exact and rounding symmetric) and no select is needed.
    """
    info = spec.info
    ties = info.combine == "ties"
    if ties and info.sparsify == "magnitude" and like.device.type == "cpu":
        lib = fused.native_for()  # the kernels, if built (each delta is checked as it comes)
        if lib is not None:
            return _ties_native(lib, deltas, like, spec)
    f32: dict[str, Any] = {"dtype": torch.float32, "device": like.device}
    scratch = torch.empty(like.shape, **f32)
    touch = torch.zeros(like.shape, **f32)  # raw deltas: branches per element
    kept_touch = torch.zeros(like.shape, **f32) if ties else None  # kept nonzeros per element
    touched: dict[str, int] = {}
    kept: dict[str, int] = {}
    steps: list[Step] = []
    acc = torch.zeros(like.shape, **f32)
    # pass 1: sparsify each branch and sum (for TIES this sum is the election's "total")
    for i in range(len(deltas)):
        branch, d, owned = _fetch(deltas, i)
        touched[branch] = _nonzeros_into(d, touch, scratch)
        if spec.info.sparsify == "magnitude":  # |d| once for the cut and the trim
            sparse, cut = magnitude_trim_(d if owned else d.clone(), spec.density, scratch)
            step: Step = (cut, None, None)
        else:
            step = _sparsify_step(name, spec, branch, d)
            sparse = _sparsified(spec, d, owned, step, scratch)
        kept[branch] = _nonzeros_into(sparse, kept_touch, scratch)
        if ties:
            steps.append(step)  # a DARE mask: one byte per element; a cut: nothing
        acc.add_(sparse)
        del sparse, d, step  # a lazy branch holds one delta at a time
    overlap = _ones(torch.gt(touch, 1, out=scratch))
    elected = discarded = 0
    if info.combine == "mean":
        acc.div_(num_branches)
    elif kept_touch is not None:
        # elect + where the sparsified sum is >= 0 (PEFT "total"), else -, as fp32 +-1 in place
        sign = torch.ge(acc, 0, out=acc).mul_(2).sub_(1)
        count = touch.zero_()  # agreeing values per element
        total = torch.zeros(like.shape, **f32)
        for i, step in enumerate(steps):
            _, d, owned = _fetch(deltas, i)
            x = _sparsified(spec, d, owned, step, scratch)
            x = x.mul_(sign) if x is not d or owned else torch.mul(x, sign)  # |d| where agreeing
            del d
            count.add_(torch.gt(x, 0, out=scratch))
            total.add_(x.clamp_min_(0))
            del x
        total.mul_(sign)
        total.div_(torch.clamp_min(count, 1, out=scratch))
        elected = _ones(torch.gt(kept_touch, 1, out=scratch))
        discarded = _ones(torch.lt(count, kept_touch, out=scratch))
        acc = total
        del sign, count, steps
    if info.combine != "mean" and spec.scale != 1.0:
        acc.mul_(spec.scale)
    report = TensorReport(like.numel(), touched, kept, overlap, elected, discarded)
    return acc, report


def _ties_native(
    lib: Any, deltas: Branches, like: torch.Tensor, spec: MergeSpec
) -> tuple[torch.Tensor, TensorReport]:
    """TIES with the magnitude trim in the C kernels of :mod:`medusa_fed.merging.fused`: per
    branch two histogram passes for the cut and one fused pass (counts, trim, sum), then per
    branch one fused pass of the disjoint mean and one final pass; the same values and counts
    as :func:`baseline_delta`'s torch passes (each a whole-tensor op and temporary)."""
    f32: dict[str, Any] = {"dtype": torch.float32, "device": like.device}
    touch, kept_touch, acc = (torch.zeros(like.shape, **f32) for _ in range(3))
    touched: dict[str, int] = {}
    kept: dict[str, int] = {}
    cuts = []
    for i in range(len(deltas)):
        branch, d, _ = _fetch(deltas, i)
        d = d.to(torch.float32).contiguous()  # no copy when it already is
        cut = fused.magnitude_cut(lib, d, spec.density)
        touched[branch], kept[branch] = fused.ties_pass1(lib, d, cut, touch, kept_touch, acc)
        cuts.append(cut)
        del d  # a lazy branch holds one delta at a time
    count, total = torch.zeros(like.shape, **f32), torch.zeros(like.shape, **f32)
    for i, cut in enumerate(cuts):
        _, d, _ = _fetch(deltas, i)
        fused.ties_pass2(lib, d.to(torch.float32).contiguous(), cut, acc, count, total)
        del d
    overlap, elected, discarded = fused.ties_final(
        lib, acc, count, touch, kept_touch, total, spec.scale
    )
    return total, TensorReport(like.numel(), touched, kept, overlap, elected, discarded)
