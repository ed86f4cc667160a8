"""Rank ownership of LoRA adapters: whole components per team, updates that add up exactly."""

from __future__ import annotations

import pytest
import torch

from medusa_fed.deltas import top_d
from medusa_fed.errors import OwnershipError
from medusa_fed.ownership import assign_ownership
from medusa_fed.ownership.lora_rank import component_probe, component_shapes, expand_components

SHAPES = {
    "m.q.lora_A.weight": (4, 6),
    "m.q.lora_B.weight": (5, 4),
    "m.v.lora_A.weight": (4, 6),
    "m.v.lora_B.weight": (3, 4),
}


def _probe(seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {n: top_d(torch.randn(s, generator=gen), 0.5) for n, s in SHAPES.items()}


def test_component_score_is_the_norm_over_row_of_a_and_column_of_b() -> None:
    # Prepare: a hand-made probe touching component 2 of q in A (row 2) and B (column 2)
    a = torch.zeros(4, 6)
    a[2, 1], a[2, 5] = 3.0, -4.0
    b = torch.zeros(5, 4)
    b[0, 2] = 12.0
    probe = {"m.q.lora_A.weight": top_d(a, 1.0), "m.q.lora_B.weight": top_d(b, 1.0)}
    # Execute
    scores = component_probe(probe, SHAPES)
    # Assert: sqrt(9 + 16 + 144) = 13 on component 2 only; v has no probe values
    q = scores["m.q.lora_rank"]
    assert q.shape == (4,) and q.indices.tolist() == [2] and q.values.tolist() == [13.0]
    assert scores["m.v.lora_rank"].indices.numel() == 0


def test_each_component_has_one_owner_and_owned_updates_add_up_exactly() -> None:
    # Prepare
    teams = {"a": True, "b": True, "c": True}
    probes = {t: component_probe(_probe(i), SHAPES) for i, t in enumerate(teams)}
    # Execute
    space = assign_ownership(probes, component_shapes(SHAPES), teams, policy="argmax")
    owners = expand_components(space, SHAPES)
    # Assert: row k of A and column k of B share one owner
    for pair in ("m.q", "m.v"):
        a_ids, b_ids = (
            owners.owners[f"{pair}.lora_A.weight"],
            owners.owners[f"{pair}.lora_B.weight"],
        )
        assert (a_ids == a_ids[:, :1]).all() and (b_ids == b_ids[:1, :]).all()
        assert torch.equal(a_ids[:, 0], b_ids[0, :])
    # and the merged product B @ A is the sum of each team's own masked product
    gen = torch.Generator().manual_seed(7)
    a_full = {t: torch.randn(4, 6, generator=gen) for t in teams}
    b_full = {t: torch.randn(5, 4, generator=gen) for t in teams}
    masks = {t: owners.mask(t) for t in teams}
    merged_a = sum(a_full[t] * masks[t]["m.q.lora_A.weight"] for t in teams)
    merged_b = sum(b_full[t] * masks[t]["m.q.lora_B.weight"] for t in teams)
    own_terms = sum(
        (b_full[t] * masks[t]["m.q.lora_B.weight"]) @ (a_full[t] * masks[t]["m.q.lora_A.weight"])
        for t in teams
    )
    assert torch.allclose(merged_b @ merged_a, own_terms, atol=1e-5)


def test_rank_ownership_without_lora_pairs_is_refused() -> None:
    with pytest.raises(OwnershipError, match="found none"):
        component_shapes({"encoder.weight": (4, 4)})
    with pytest.raises(OwnershipError, match="whole LoRA pairs"):
        component_shapes({"x.lora_A.weight": (4, 6), "x.lora_B.weight": (3, 2)})
