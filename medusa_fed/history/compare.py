"""``medusa diff``: which tensors of two stored objects differ, in how many elements, by how much.

Both sides are compared as whole shared-space values (:func:`medusa_fed.history.values.values_of`):
a base's values, a branch's start + delta, a merge's result. Two branches of the same start are
compared on their deltas instead, which is exact (no rounding of ``start + delta``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from medusa_fed.history.branches import Store
from medusa_fed.history.db import ObjectRow
from medusa_fed.history.values import delta_of, values_of


@dataclass(frozen=True)
class TensorDiff:
    """One tensor's difference: ``differing`` elements of ``numel``, max and L2 of ``b - a``.

    ``only_in`` is ``"a"`` or ``"b"`` for a tensor one side lacks (or whose shape differs,
    ``"shape"``); its counts are then 0.
    """

    name: str
    numel: int
    differing: int
    max_abs: float
    l2: float
    only_in: str | None = None


def diff_states(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> list[TensorDiff]:
    """Per-tensor differences between ``a`` and ``b`` (sorted by name)."""
    out: list[TensorDiff] = []
    for name in sorted(set(a) | set(b)):
        if name not in b or name not in a:
            out.append(TensorDiff(name, 0, 0, 0.0, 0.0, "a" if name in a else "b"))
            continue
        x, y = a[name], b[name]
        if tuple(x.shape) != tuple(y.shape):
            out.append(TensorDiff(name, x.numel(), 0, 0.0, 0.0, "shape"))
            continue
        d = y.to(torch.float64) - x.to(torch.float64)
        differing = int(torch.count_nonzero(y != x))
        out.append(
            TensorDiff(
                name,
                x.numel(),
                differing,
                float(d.abs().max()) if d.numel() else 0.0,
                float(torch.linalg.vector_norm(d)),
            )
        )
    return out


def diff_objects(
    store: Store, a: ObjectRow, b: ObjectRow, model: str | None = None
) -> tuple[list[TensorDiff], str]:
    """Differences between two stored objects and what was compared (``values``/``deltas``)."""
    if a.kind == b.kind == "branch" and a.meta["start"] == b.meta["start"]:
        return diff_states(delta_of(store, a), delta_of(store, b)), "deltas"
    return diff_states(values_of(store, a, model), values_of(store, b, model)), "values"


def render_diff(
    diffs: list[TensorDiff], compared: str, show_all: bool = False, limit: int = 20
) -> list[str]:
    """Totals, then the differing tensors (largest count first, ``limit`` rows unless
    ``show_all``)."""
    total = sum(d.numel for d in diffs)
    differing = sum(d.differing for d in diffs)
    changed = [d for d in diffs if d.differing or d.only_in]
    lines = [
        f"compared {compared}: {len(changed)} of {len(diffs)} tensors differ, "
        f"{differing:,} of {total:,} elements ({100.0 * differing / max(total, 1):.2f}%)"
    ]
    if not changed:
        return lines
    changed.sort(key=lambda d: (-d.differing, d.name))
    shown = changed if show_all else changed[:limit]
    width = max(len(d.name) for d in shown)
    lines.append(
        f"{'tensor':<{width}}  {'differ':>10}  {'of':>10}  {'max |b-a|':>10}  {'L2(b-a)':>10}"
    )
    for d in shown:
        if d.only_in:
            where = "shapes differ" if d.only_in == "shape" else f"only in {d.only_in}"
            lines.append(f"{d.name:<{width}}  {where}")
            continue
        lines.append(
            f"{d.name:<{width}}  {d.differing:>10,}  {d.numel:>10,}  "
            f"{d.max_abs:>10.3g}  {d.l2:>10.3g}"
        )
    if len(shown) < len(changed):
        lines.append(f"... {len(changed) - len(shown)} more (--all shows every tensor)")
    return lines


__all__ = ["TensorDiff", "diff_objects", "diff_states", "render_diff"]
