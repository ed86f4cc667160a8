"""No team seizes the ownership: rank weights make a probe's scale worthless, the share cap holds
exactly, and both leave an honest assignment alone where they should."""

from __future__ import annotations

import pytest
import torch

from medusa_fed.deltas import SparseDelta
from medusa_fed.errors import OwnershipError
from medusa_fed.ownership import NO_OWNER, assign_ownership
from medusa_fed.ownership.fairness import cap_shares, rank_weights
from medusa_fed.ownership.synthetic import synthetic_probes

SHAPES = {"a.weight": (64, 48), "b.bias": (300,)}
TEAMS = ("alpha", "beta", "gamma")
ALL = {t: True for t in TEAMS}


def _shares(probes, policy="proportional"):  # type: ignore[no-untyped-def]
    m = assign_ownership(probes, SHAPES, ALL, policy=policy, seed=1)
    total = sum(o.numel() for o in m.owners.values())
    return m, {t: c / total for t, c in m.owned_counts().items()}


def test_rank_weights_are_mid_ranks_with_signs_and_ignore_scale():
    d = SparseDelta((5,), torch.tensor([0, 1, 2, 3, 4]), torch.tensor([-4.0, 1.0, 2.0, 2.0, 0.0]))
    w = rank_weights({"t": d})["t"]
    # |values| sorted: 0 (rank 1), 1 (2), 2, 2 (mid-rank 3.5), 4 (5); divided by 5, sign kept
    assert w.values.tolist() == pytest.approx([-1.0, 0.4, 0.7, 0.7, 0.0])
    assert torch.equal(w.indices, d.indices)
    huge = rank_weights({"t": SparseDelta((5,), d.indices, d.values * 1e30)})["t"]
    assert torch.equal(huge.values, w.values)
    flat = rank_weights({"t": SparseDelta((3,), torch.arange(3), torch.full((3,), 7.0))})["t"]
    assert flat.values.tolist() == pytest.approx([2 / 3] * 3)  # mid-rank 2 of 3, never all 1


@pytest.mark.parametrize("policy", ["proportional", "argmax"])
def test_a_scaled_probe_gains_no_share_under_rank_weights(policy):
    honest = synthetic_probes(SHAPES, TEAMS, seed=3)
    greedy = synthetic_probes(SHAPES, TEAMS, seed=3, scales={"beta": 1e30})
    # magnitudes (the old comparison): beta wins every element it probed
    _, raw = _shares(greedy, policy)
    assert raw["beta"] > 0.35
    # ranks: the scaled probe's map is the honest probe's map, element for element
    ranked = {t: rank_weights(p) for t, p in greedy.items()}
    m_rank, shares = _shares(ranked, policy)
    m_honest, _ = _shares({t: rank_weights(p) for t, p in honest.items()}, policy)
    assert all(torch.equal(m_rank.owners[n], m_honest.owners[n]) for n in SHAPES)
    assert shares["beta"] == pytest.approx(1 / 3, abs=0.04)


def test_share_cap_holds_exactly_keeps_the_best_elements_and_refills_the_others():
    probes = {t: rank_weights(p) for t, p in synthetic_probes(SHAPES, TEAMS, seed=5).items()}
    probes["alpha"] = {  # alpha probed every element: it wins most of them
        n: SparseDelta(s, torch.arange(torch.Size(s).numel()), torch.rand(torch.Size(s).numel()))
        for n, s in SHAPES.items()
    }
    m, shares = _shares(probes, "argmax")
    total = sum(o.numel() for o in m.owners.values())
    assert shares["alpha"] > 0.5
    capped = cap_shares(m, probes, 0.4, seed=0)
    counts = capped.owned_counts()
    cap = int(0.4 * total)
    assert counts["alpha"] == cap and max(counts.values()) <= cap
    assert sum(counts.values()) == total  # room enough: nothing left at the base
    # alpha kept its highest-weight elements: every one it lost weighs no more than any it kept
    for n in SHAPES:
        w = probes["alpha"][n].values.reshape(SHAPES[n])
        kept = capped.owners[n] == 0
        lost = (m.owners[n] == 0) & ~kept
        assert float(w[lost].max()) <= float(w[kept].min())
        unchanged = m.owners[n] != 0
        assert torch.equal(capped.owners[n][unchanged], m.owners[n][unchanged])
    assert cap_shares(m, probes, 1.0, seed=0) is m


def test_a_cap_below_one_over_teams_leaves_the_rest_at_the_base():
    probes = synthetic_probes(SHAPES, TEAMS, seed=2)
    m, _ = _shares(probes)
    total = sum(o.numel() for o in m.owners.values())
    capped = cap_shares(m, probes, 0.25, seed=0)
    counts = capped.owned_counts()
    assert all(c == int(0.25 * total) for c in counts.values())
    frozen = sum(int((o == NO_OWNER).sum()) for o in capped.owners.values())
    assert frozen == total - sum(counts.values())
    with pytest.raises(OwnershipError, match=r"max-share must be in \(0, 1\], found 0"):
        cap_shares(m, probes, 0.0, seed=0)
