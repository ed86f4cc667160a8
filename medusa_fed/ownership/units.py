"""Ownership units coarser than an element: what one owner gets, and how to assign it.

Each unit maps a team's probe into its own space (one score per unit), gives that space's shapes
for :func:`medusa_fed.ownership.assign_ownership`, and expands the unit-space map back to one
owner per element. ``element`` (the paper's) needs none of this and is not listed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NamedTuple

from medusa_fed.deltas import SparseDelta
from medusa_fed.ownership.lora_rank import component_probe, component_shapes, expand_components
from medusa_fed.ownership.ownership_map import OwnershipMap
from medusa_fed.ownership.rows import expand_rows, row_probe, row_shapes

Shapes = Mapping[str, tuple[int, ...]]


class Unit(NamedTuple):
    probe: Callable[[Mapping[str, SparseDelta], Shapes], dict[str, SparseDelta]]
    shapes: Callable[[Shapes], dict[str, tuple[int, ...]]]
    expand: Callable[[OwnershipMap, Shapes], OwnershipMap]


UNITS: dict[str, Unit] = {
    "lora-rank": Unit(component_probe, component_shapes, expand_components),
    "row": Unit(row_probe, row_shapes, expand_rows),
}
