"""Row ownership: each output row of a weight matrix has one owner; vectors stay by element."""

from __future__ import annotations

import pytest
import torch

from medusa_fed.deltas import top_d
from medusa_fed.errors import ConfigError, OwnershipError
from medusa_fed.ownership import assign_ownership
from medusa_fed.ownership.rows import expand_rows, row_probe, row_shapes
from medusa_fed.run_config import RunConfig

SHAPES = {"l1.weight": (5, 6), "l1.bias": (5,), "l2.weight": (3, 5)}


def _probe(seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {n: top_d(torch.randn(s, generator=gen), 0.5) for n, s in SHAPES.items()}


def test_row_score_is_the_norm_over_the_row_and_vectors_pass_through() -> None:
    # Prepare: a hand-made probe with values on row 1 (3, -4) and row 3 (12) of l1
    w = torch.zeros(5, 6)
    w[1, 0], w[1, 5], w[3, 2] = 3.0, -4.0, 12.0
    bias = top_d(torch.tensor([0.0, 1.0, 0.0, -2.0, 0.0]), 1.0)
    probe = {"l1.weight": top_d(w, 1.0), "l1.bias": bias, "l2.weight": top_d(torch.zeros(3, 5), 1)}
    # Execute
    scores = row_probe(probe, SHAPES)
    # Assert: 5 on row 1, 12 on row 3; the bias unchanged; l2 has no probe values
    assert scores["l1.weight"].shape == (5,)
    assert scores["l1.weight"].indices.tolist() == [1, 3]
    assert scores["l1.weight"].values.tolist() == [5.0, 12.0]
    assert scores["l1.bias"] is bias and scores["l2.weight"].indices.numel() == 0
    assert row_shapes(SHAPES) == {"l1.weight": (5,), "l1.bias": (5,), "l2.weight": (3,)}


@pytest.mark.parametrize("policy", ["proportional", "argmax", "balanced"])
def test_each_row_has_one_owner_and_every_element_one_owner(policy: str) -> None:
    # Prepare
    teams = {"a": True, "b": True, "c": True}
    probes = {t: row_probe(_probe(i), SHAPES) for i, t in enumerate(teams)}
    # Execute
    space = assign_ownership(probes, row_shapes(SHAPES), teams, policy=policy, seed=3)
    owners = expand_rows(space, SHAPES)
    # Assert: full shapes, one owner per row of each matrix, the masks partition every tensor
    for name, shape in SHAPES.items():
        ids = owners.owners[name]
        assert tuple(ids.shape) == shape
        if len(shape) == 2:
            assert (ids == ids[:, :1]).all()
    masks = [owners.mask(t) for t in teams]
    for name in SHAPES:
        assert torch.equal(sum(m[name].int() for m in masks), torch.ones(SHAPES[name], dtype=int))
    # and the team with the largest row score wins that row under argmax
    if policy == "argmax":
        for row in range(5):
            norms = {t: _row_norm(probes[t]["l1.weight"], row) for t in teams}
            if max(norms.values()) > 0:
                best = max(norms, key=norms.get)
                assert owners.owners["l1.weight"][row, 0] == owners.teams.index(best)


def _row_norm(scores, row: int) -> float:
    hit = (scores.indices == row).nonzero().flatten()
    return float(scores.values[hit[0]]) if hit.numel() else 0.0


def test_row_ownership_needs_matrices_and_is_refused_for_ia3() -> None:
    with pytest.raises(OwnershipError, match="expected 2-D weight tensors .* found none"):
        row_shapes({"a.ia3_l": (8,), "b.ia3_l": (4,)})
    with pytest.raises(ConfigError, match="ownership-unit = row: expected method = full or lora"):
        RunConfig(method="ia3", ownership_unit="row")
    assert RunConfig(method="lora", ownership_unit="row").ownership_unit == "row"
