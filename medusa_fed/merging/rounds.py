"""Multi-round Medusa on tensors: what a round starts from, and a team's branch over rounds.

The coordinator (``rounds = R``) and the benchmark share these, so both mean the same thing:
a team's branch is the sum of its round deltas (its total change from the base), and round r > 1
starts from the plain Medusa merge (scale 1) of every team's branch so far. With a warm start a
team's branch begins as its probe values on the elements it owns (:func:`owned_probe`), so round 1
starts from their merge as well.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import torch

from medusa_fed.deltas import SparseDelta, StateDict
from medusa_fed.merging.merge import merge_states
from medusa_fed.merging.spec import MergeSpec


def add_round(total: StateDict | None, delta: Mapping[str, torch.Tensor]) -> StateDict:
    """A team's branch after one more round: ``total + delta`` (``delta`` itself in round 1)."""
    if total is None:
        return dict(delta)
    return {name: total[name] + d for name, d in delta.items()}


def round_start(
    base: Mapping[str, torch.Tensor],
    totals: Mapping[str, Mapping[str, torch.Tensor]],
    uncontrolled: Collection[str] = (),
) -> StateDict:
    """Shared weights the next round starts from: the Medusa merge of the branches so far (the
    merge draws nothing at random, so it takes no seed)."""
    return merge_states(base, totals, MergeSpec("medusa"), uncontrolled=uncontrolled)


def owned_probe(
    sparse: Mapping[str, SparseDelta], mask: Mapping[str, torch.Tensor] | None
) -> StateDict:
    """A team's branch before round 1 of a warm start: its top-d probe values on the elements
    it owns, dense fp32, zero elsewhere (``mask=None``, an uncontrolled team: every probe value)."""
    out = {}
    for name, s in sparse.items():
        dense = s.to_dense()
        out[name] = dense if mask is None else dense * mask[name]
    return out
