"""Ownership of whole output rows of each weight matrix instead of single elements.

Under element ownership (the paper's) the teams' owned elements of one weight matrix are
scattered: every team changes some weights of every output neuron, so each neuron's activation
carries all teams' updates at once. Under *row* ownership row ``i`` of a 2-D weight (``[out, in]``
for a linear layer: output neuron ``i``; a token's vector for an embedding) belongs to one team,
so each team's update of that matrix acts on its own neurons only: the teams' updates occupy
disjoint output subspaces, the structure that TSV-M builds by orthogonalising after the fact.

How: a team's probe score of row ``i`` is the L2 norm of its probe delta over that row; the usual
assignment (:func:`medusa_fed.ownership.assign_ownership`, any policy) runs on that row space
(one ``[out]`` tensor per matrix); each row's owner is then written to every element of the row.
Tensors that are not 2-D (biases, norms) keep element ownership. Row scores are norms, so they
carry no sign: with uncontrolled teams the direction rule sees all row scores as positive.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from medusa_fed.deltas import SparseDelta
from medusa_fed.errors import OwnershipError
from medusa_fed.ownership.ownership_map import OwnershipMap


def _matrices(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, int]]:
    matrices = {n: (int(s[0]), int(s[1])) for n, s in shapes.items() if len(s) == 2}
    if not matrices:
        raise OwnershipError(
            "ownership-unit = row: expected 2-D weight tensors in the shared space, found none "
            "(only vectors); use ownership-unit = element"
        )
    return matrices


def row_shapes(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """The ownership space of row ownership: ``[rows]`` per 2-D tensor, the rest as is."""
    matrices = _matrices(shapes)
    return {n: ((matrices[n][0],) if n in matrices else tuple(s)) for n, s in shapes.items()}


def row_probe(
    probe: Mapping[str, SparseDelta], shapes: Mapping[str, tuple[int, ...]]
) -> dict[str, SparseDelta]:
    """One team's probe on the row space: per 2-D tensor the L2 norm of the probe delta over
    each row (rows with no probe value left out); other tensors unchanged."""
    matrices = _matrices(shapes)
    out: dict[str, SparseDelta] = {}
    for name, sparse in probe.items():
        if name not in matrices:
            out[name] = sparse
            continue
        rows, cols = matrices[name]
        energy = torch.zeros(rows, dtype=torch.float64)
        if sparse.indices.numel():
            energy.index_add_(0, sparse.indices // cols, sparse.values.double() ** 2)
        nonzero = torch.nonzero(energy > 0).flatten()
        out[name] = SparseDelta((rows,), nonzero, energy[nonzero].sqrt().float())
    return out


def expand_rows(row_map: OwnershipMap, shapes: Mapping[str, tuple[int, ...]]) -> OwnershipMap:
    """The element ownership map of a row-space map: row ``i``'s owner on every element of it."""
    matrices = _matrices(shapes)
    owners = {
        n: (ids[:, None].expand(matrices[n]).contiguous() if n in matrices else ids)
        for n, ids in row_map.owners.items()
    }
    return OwnershipMap(row_map.teams, owners, row_map.uncontrolled)
