"""Ownership of whole LoRA rank components instead of adapter elements.

A LoRA adapter changes a weight by ``B @ A`` (``A``: [r, in], ``B``: [out, r]). Under element
ownership (the paper's) two teams owning disjoint elements of ``A`` and ``B`` still both change
every product they touch, so their weight updates are not disjoint. Under *rank* ownership
component ``k`` (row ``k`` of ``A`` with column ``k`` of ``B``) belongs to one team, so the
merged update is exactly the sum of each team's own ``B_k A_k`` terms.

How: each (A, B) pair becomes one small tensor of ``r`` components; a team's probe score of
component ``k`` is the L2 norm of its probe delta over row ``k`` of ``A`` and column ``k`` of
``B``. The usual assignment (:func:`medusa_fed.ownership.assign_ownership`, any policy) runs on
that component space; each component's owner is then written to every element of its row and
column. Shared tensors that are not part of a LoRA pair keep element ownership.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from medusa_fed.deltas import SparseDelta
from medusa_fed.errors import OwnershipError
from medusa_fed.ownership.ownership_map import OwnershipMap

_A, _B = ".lora_A.weight", ".lora_B.weight"
COMPONENT_SUFFIX = ".lora_rank"


def lora_pairs(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[str, str, int]]:
    """component-tensor name -> (A name, B name, rank) for every LoRA pair in ``shapes``."""
    pairs: dict[str, tuple[str, str, int]] = {}
    for name, shape in shapes.items():
        if not name.endswith(_A):
            continue
        prefix = name[: -len(_A)]
        b_name = prefix + _B
        b_shape = shapes.get(b_name)
        if len(shape) != 2 or b_shape is None or len(b_shape) != 2 or b_shape[1] != shape[0]:
            raise OwnershipError(
                f"{name}: expected a LoRA pair with {b_name} of shape [out, {shape[0]}], found "
                f"{b_shape}; rank ownership needs whole LoRA pairs"
            )
        pairs[prefix + COMPONENT_SUFFIX] = (name, b_name, int(shape[0]))
    if not pairs:
        raise OwnershipError(
            "ownership-unit = lora-rank: expected LoRA adapter tensors (*.lora_A.weight / "
            "*.lora_B.weight) in the shared space, found none; use ownership-unit = element"
        )
    return pairs


def component_shapes(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """The ownership space of rank ownership: one [r] tensor per LoRA pair, the rest as is."""
    pairs = lora_pairs(shapes)
    in_pairs = {n for a, b, _ in pairs.values() for n in (a, b)}
    out = {n: s for n, s in shapes.items() if n not in in_pairs}
    out.update({name: (r,) for name, (_, _, r) in pairs.items()})
    return out


def component_probe(
    probe: Mapping[str, SparseDelta], shapes: Mapping[str, tuple[int, ...]]
) -> dict[str, SparseDelta]:
    """One team's probe on the component space: per LoRA pair the L2 norm of the probe delta
    over each component's row of A and column of B (components with no probe value left out)."""
    pairs = lora_pairs(shapes)
    in_pairs = {n for a, b, _ in pairs.values() for n in (a, b)}
    out = {n: s for n, s in probe.items() if n not in in_pairs}
    for name, (a_name, b_name, rank) in pairs.items():
        energy = torch.zeros(rank, dtype=torch.float64)
        for tensor, axis in ((a_name, 0), (b_name, 1)):
            sparse = probe.get(tensor)
            if sparse is None or sparse.indices.numel() == 0:
                continue
            shape = shapes[tensor]
            component = sparse.indices // shape[1] if axis == 0 else sparse.indices % shape[1]
            energy.index_add_(0, component, sparse.values.double() ** 2)
        nonzero = torch.nonzero(energy > 0).flatten()
        out[name] = SparseDelta((rank,), nonzero, energy[nonzero].sqrt().float())
    return out


def expand_components(
    component_map: OwnershipMap, shapes: Mapping[str, tuple[int, ...]]
) -> OwnershipMap:
    """The element ownership map of a component-space map: component ``k``'s owner on row
    ``k`` of A and column ``k`` of B."""
    pairs = lora_pairs(shapes)
    owners = {n: t for n, t in component_map.owners.items() if n not in pairs}
    for name, (a_name, b_name, _rank) in pairs.items():
        ids = component_map.owners[name]
        owners[a_name] = ids[:, None].expand(shapes[a_name]).contiguous()
        owners[b_name] = ids[None, :].expand(shapes[b_name]).contiguous()
    return OwnershipMap(component_map.teams, owners, component_map.uncontrolled)
