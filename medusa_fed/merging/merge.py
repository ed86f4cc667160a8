"""Merge branch deltas into the base, one tensor at a time.

``deltas`` is ``branch -> tensor name -> dense delta (tuned - base)``. The inner mappings may be
lazy (read from disk on ``__getitem__``, mergekit style): each tensor's deltas are fetched, merged
and dropped before the next. Beyond the inputs (base + branch deltas) one tensor's merge peaks at
about 2.3x (linear, task arithmetic), 2.8x (medusa), 3.8x (DARE linear / task arithmetic) and
5.9x (TIES, DARE-TIES) that tensor, its merged output included (measured, 3 branches, 20M
elements, glibc mmap threshold 1 MiB so freed memory leaves RSS). The medusa figure is its
sign-election path (uncontrolled branches); with controlled branches only, the sum accumulates in
the first branch's delta when that was read for the merge, and disjointness is checked by counts.
A branch that omits a tensor has a zero delta there.

Every method accumulates in fp32 over the branches in sorted-name order and casts the result to the
base tensor's dtype: ``merged = (base.float() + delta).to(base.dtype)``. See
:mod:`medusa_fed.merging.methods` for each method's exact semantics.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, replace
from typing import Any, overload

import torch
from tqdm.auto import tqdm

from medusa_fed.errors import MergeError
from medusa_fed.merging import fused
from medusa_fed.merging.methods import baseline_delta, medusa_delta
from medusa_fed.merging.report import TensorReport, summarize
from medusa_fed.merging.spec import OWNERSHIP_METHODS, MergeSpec
from medusa_fed.merging.spectral import is_spectral, spectral_delta

logger = logging.getLogger(__name__)


class _Pairs(Sequence[tuple[str, torch.Tensor]]):
    """Validated ``(branch, fp32 delta)`` pairs in sorted branch order, each fetched when used.

    With lazy inputs (read from disk on access) a method that passes over the branches once holds
    one branch's delta at a time (two while the next is read); a second pass (TIES's disjoint
    mean, a sign election) reads them again. In-memory fp32 deltas are used as they are.
    """

    def __init__(self, name: str, base: torch.Tensor, deltas: Mapping[str, torch.Tensor]) -> None:
        self._name, self._base, self._deltas = name, base, deltas
        self._branches = sorted(deltas)
        self._checked: set[str] = set()
        # a _Column knows whether a branch's mapping reads a new tensor on every access
        self._new_tensors = getattr(deltas, "new_tensors", None)

    def __len__(self) -> int:
        return len(self._branches)

    @property
    def branches(self) -> list[str]:
        """The branch names, in order, without fetching any delta."""
        return list(self._branches)

    def fetch(self, i: int, check: bool = True) -> tuple[str, torch.Tensor, bool]:
        """``(branch, fp32 delta, owned)``: ``owned`` when the tensor is new to this call (read
        from disk or converted), so the caller may modify it in place; ``check=False`` skips the
        finiteness check (for a caller that checks a sum of the deltas instead, see
        :meth:`check_finite`)."""
        branch, name, base = self._branches[i], self._name, self._base
        source = self._deltas[branch]
        owned = self._new_tensors is not None and bool(self._new_tensors(branch))
        if tuple(source.shape) != tuple(base.shape):
            raise MergeError(
                f"{name}: branch {branch!r} sent a delta of shape {tuple(source.shape)}, expected "
                f"the base's shape {tuple(base.shape)}; merge aborted, nothing written"
            )
        plain = source.detach() if source.requires_grad else source  # detach shares storage
        d = plain.to(device=base.device, dtype=torch.float32)  # the same tensor when it already is
        owned = owned or d is not plain  # converted: a copy of our own
        if check and branch not in self._checked:
            # a finite sum implies finite entries (NaN/Inf propagate); count only on the slow path
            if not bool(torch.isfinite(d.sum())):
                self._raise_if_not_finite(branch, d)
            self._checked.add(branch)
        return branch, d, owned

    def check_finite(self) -> None:
        """Raise the MergeError of the first branch with a NaN/Inf delta (fetches each again)."""
        for i in range(len(self)):
            self.fetch(i)

    def _raise_if_not_finite(self, branch: str, d: torch.Tensor) -> None:
        if not bool(torch.isfinite(d).all()):
            bad = d.numel() - int(torch.count_nonzero(torch.isfinite(d)))
            raise MergeError(
                f"{self._name}: branch {branch!r} sent {bad:,} NaN/Inf delta value(s), expected "
                "finite values; merge aborted, nothing written"
            )

    @overload
    def __getitem__(self, i: int) -> tuple[str, torch.Tensor]: ...
    @overload
    def __getitem__(self, i: slice) -> list[tuple[str, torch.Tensor]]: ...
    def __getitem__(
        self, i: int | slice
    ) -> tuple[str, torch.Tensor] | list[tuple[str, torch.Tensor]]:
        if isinstance(i, slice):
            return [self[j] for j in range(len(self))[i]]
        branch, d, _ = self.fetch(i)
        return branch, d

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        for i in range(len(self)):
            yield self[i]


class _Column(Mapping[str, torch.Tensor]):
    """One tensor's deltas across branches (``branch -> deltas[branch][name]``), read on access."""

    def __init__(self, deltas: Mapping[str, Mapping[str, torch.Tensor]], name: str) -> None:
        self._deltas, self._name = deltas, name
        self._branches = [b for b in deltas if name in deltas[b]]

    def __getitem__(self, branch: str) -> torch.Tensor:
        if branch not in self._branches:
            raise KeyError(branch)
        return self._deltas[branch][self._name]

    def new_tensors(self, branch: str) -> bool:
        """Whether each access to ``branch`` returns a new tensor (a lazy file, not a dict)."""
        return bool(getattr(self._deltas[branch], "returns_new_tensors", False))

    def __iter__(self) -> Iterator[str]:
        return iter(self._branches)

    def __len__(self) -> int:
        return len(self._branches)


def merge_tensor_with_report(
    name: str,
    base: torch.Tensor,
    deltas: Mapping[str, torch.Tensor],
    spec: MergeSpec,
    uncontrolled: Collection[str] = (),
    num_branches: int | None = None,
) -> tuple[torch.Tensor, TensorReport]:
    """:func:`merge_tensor` plus its :class:`TensorReport`."""
    pairs = _Pairs(name, base, deltas)
    n = len(pairs) if num_branches is None else num_branches
    if n < max(1, len(pairs)):
        raise MergeError(
            f"{name}: num_branches={num_branches} but {len(pairs)} branch(es) sent this tensor; "
            "expected at least that many"
        )
    if spec.method == "medusa" or (spec.method == "medusa_tsv" and not is_spectral(name, base)):
        acc, report = medusa_delta(name, pairs, base, spec.scale, frozenset(uncontrolled))
    elif spec.method == "medusa_tsv":  # owned deltas of a weight matrix: TSV-M's sum
        acc, report = spectral_delta(name, pairs, base, "tsv_m", spec.scale)
    elif spec.info.combine in ("tsv", "iso", "iso_cts"):
        acc, report = spectral_delta(
            name, pairs, base, spec.method, spec.scale, spec.common_fraction
        )
    else:
        acc, report = baseline_delta(name, pairs, base, spec, n)
    del pairs
    plain = base.detach()
    if plain.dtype == torch.float32:  # acc + base == base + acc, bit for bit
        changed = fused.add_changed_(acc, plain)
        merged = acc
    else:
        acc.add_(plain.to(torch.float32))
        merged = acc.to(base.dtype)
        changed = int(torch.count_nonzero(merged != base))
    return merged, replace(report, changed=changed)


def merge_tensor(
    name: str,
    base: torch.Tensor,
    deltas: Mapping[str, torch.Tensor],
    spec: MergeSpec,
    uncontrolled: Collection[str] = (),
    num_branches: int | None = None,
) -> torch.Tensor:
    """Merge one tensor's branch deltas into ``base`` (returns a new tensor in ``base``'s dtype).

    name : str
        Tensor name (error messages, DARE seeds).
    base : torch.Tensor
        The base tensor; not modified.
    deltas : Mapping[str, torch.Tensor]
        Branch name -> delta of this tensor, same shape as ``base`` (converted to fp32).
    spec : MergeSpec
        Method and settings.
    uncontrolled : Collection[str] (default: ())
        Branches that trained without an ownership mask (``medusa`` only; other methods treat all
        branches alike).
    num_branches : int | None (default: None)
        Branches in the whole merge, including those that omitted this tensor (``linear``'s mean
        divides by it); ``None`` means ``len(deltas)``.
    """
    return merge_tensor_with_report(name, base, deltas, spec, uncontrolled, num_branches)[0]


def _check_branches(
    base: Mapping[str, torch.Tensor],
    deltas: Mapping[str, Mapping[str, torch.Tensor]],
    uncontrolled: Collection[str],
) -> None:
    if not deltas:
        raise MergeError("expected at least one branch delta to merge, found none")
    unknown = sorted(set(uncontrolled) - set(deltas))
    if unknown:
        raise MergeError(
            f"uncontrolled branch(es) {unknown} are not among the branches {sorted(deltas)}; "
            "merge aborted"
        )
    for branch in sorted(deltas):
        extra = sorted(set(deltas[branch]) - set(base))
        if extra:
            raise MergeError(
                f"branch {branch!r} sent {len(extra)} tensor(s) the base does not have "
                f"(e.g. {extra[:3]}); expected only shared tensors; merge aborted"
            )


def merge_stream(
    base: Mapping[str, torch.Tensor],
    deltas: Mapping[str, Mapping[str, torch.Tensor]],
    spec: MergeSpec,
    uncontrolled: Collection[str],
    progress: bool = False,
) -> Iterable[tuple[str, torch.Tensor, TensorReport]]:
    """``(name, merged tensor, its report)`` for every tensor of ``base``, in ``base``'s order.

    Each tensor's branch deltas are fetched when the method uses them (see :class:`_Pairs`) and
    dropped before the next tensor, so lazy inputs keep memory near one tensor's working set;
    :func:`merge_states` and :func:`medusa_fed.merging.streaming.merge_to_folder` consume it.
    """
    _check_branches(base, deltas, uncontrolled)
    if uncontrolled and spec.method not in OWNERSHIP_METHODS:
        logger.info("merge: %s treats uncontrolled branches like the others", spec.method)
    names = list(base)
    bar = tqdm(names, desc=f"merge ({spec.method})", unit="tensor", disable=not progress)
    for name in bar:
        merged, report = merge_tensor_with_report(
            name, base[name], _Column(deltas, name), spec, uncontrolled, len(deltas)
        )
        yield name, merged, report


def merge_states_with_report(
    base: Mapping[str, torch.Tensor],
    deltas: Mapping[str, Mapping[str, torch.Tensor]],
    spec: MergeSpec,
    uncontrolled: Collection[str] = (),
    progress: bool = False,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """:func:`merge_states` plus the JSON-able report of :func:`merge_report`."""
    merged: dict[str, torch.Tensor] = {}
    reports: dict[str, TensorReport] = {}
    for name, tensor, report in merge_stream(base, deltas, spec, uncontrolled, progress):
        merged[name], reports[name] = tensor, report
    summary = summarize(spec.method, asdict(spec), reports)
    logger.info(
        "merge: %s merged %d tensors from %d branches (%d overlapping, %d sign-elected elements)",
        spec.method,
        len(merged),
        len(deltas),
        summary["totals"]["overlap"],
        summary["totals"]["sign_elected"],
    )
    return merged, summary


def merge_states(
    base: Mapping[str, torch.Tensor],
    deltas: Mapping[str, Mapping[str, torch.Tensor]],
    spec: MergeSpec,
    uncontrolled: Collection[str] = (),
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    """Merge every tensor of ``base`` (see :func:`merge_tensor`); returns the merged state.

    deltas : Mapping[str, Mapping[str, torch.Tensor]]
        Branch name -> tensor name -> dense delta. A branch may omit a tensor (zero delta); a
        tensor the base lacks is a :class:`MergeError`.
    uncontrolled : Collection[str] (default: ())
        Branch names that trained without a mask; each must be a key of ``deltas``.
    progress : bool (default: False)
        Show a tqdm bar over tensors.
    """
    return merge_states_with_report(base, deltas, spec, uncontrolled, progress)[0]


def merge_report(
    base: Mapping[str, torch.Tensor],
    deltas: Mapping[str, Mapping[str, torch.Tensor]],
    spec: MergeSpec,
    uncontrolled: Collection[str] = (),
    progress: bool = False,
) -> dict[str, Any]:
    """Only the report of a merge (each merged tensor is dropped as soon as it is counted).

    ``{"method", "spec", "totals": {numel, overlap, sign_elected, discarded, changed, touched},
    "tensors": {name: TensorReport fields}}``; see :class:`TensorReport`.
    """
    reports = {name: r for name, _, r in merge_stream(base, deltas, spec, uncontrolled, progress)}
    return summarize(spec.method, asdict(spec), reports)


def check_finite(merged: Mapping[str, torch.Tensor], what: str) -> None:
    """MergeError unless every merged value is finite: a merge with inf / NaN (a huge scale, an
    overflowing branch) is refused before anything stores or exports it."""
    bad = {name: int((~torch.isfinite(t)).sum()) for name, t in merged.items()}
    bad = {name: n for name, n in bad.items() if n}
    if bad:
        first = next(iter(bad))
        raise MergeError(
            f"{what}: expected finite merged weights, found {sum(bad.values()):,} inf/NaN values "
            f"in {len(bad)} tensor(s) (first: {first}); nothing stored. Lower the scale or "
            "check the branches"
        )
