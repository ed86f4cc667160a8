"""What a merge did to each tensor: counts that explain a merged model (JSON-able)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

_TOTALS = ("numel", "overlap", "sign_elected", "discarded", "changed")


@dataclass(frozen=True)
class TensorReport:
    """Per-tensor merge statistics (element counts).

    numel : int
        Elements in the tensor.
    touched : dict[str, int]
        Per branch: elements its raw delta changed (nonzero).
    kept : dict[str, int]
        Per branch: nonzero elements left after sparsifying (TIES trim / DARE drop); equals
        ``touched`` for methods that do not sparsify.
    overlap : int
        Elements changed by more than one branch (raw deltas): the conflicts ownership prevents.
    sign_elected : int
        Elements where a sign election chose among two or more nonzero values (medusa: overlaps
        involving an uncontrolled branch; TIES variants: elements with two or more kept values).
    discarded : int
        Elements where at least one nonzero value disagreed with the elected sign and was left out.
    changed : int
        Elements whose merged value differs from the base (after casting to the base dtype).
    """

    numel: int
    touched: dict[str, int]
    kept: dict[str, int]
    overlap: int = 0
    sign_elected: int = 0
    discarded: int = 0
    changed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(method: str, spec: Mapping[str, Any], tensors: Mapping[str, TensorReport]) -> dict:
    """The JSON-able report of a whole merge: spec, per-tensor counts and their totals."""
    totals = {key: sum(getattr(r, key) for r in tensors.values()) for key in _TOTALS}
    branches = sorted({b for r in tensors.values() for b in r.touched})
    totals_touched = {b: sum(r.touched.get(b, 0) for r in tensors.values()) for b in branches}
    return {
        "method": method,
        "spec": dict(spec),
        "totals": {**totals, "touched": totals_touched},
        "tensors": {name: r.to_dict() for name, r in tensors.items()},
    }
