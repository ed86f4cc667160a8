"""assign_ownership: partition, direction rule, reproducibility, hand-worked example, errors."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from medusa_fed.deltas import SparseDelta, top_d
from medusa_fed.errors import OwnershipError, PayloadError
from medusa_fed.ownership import (
    NO_OWNER,
    OwnershipMap,
    Unselected,
    assign_ownership,
    capacities,
)
from medusa_fed.ownership.synthetic import synthetic_probes

POLICIES = ["proportional", "argmax", "balanced"]


def dense(values: list[float]) -> SparseDelta:
    return top_d(torch.tensor(values), 1.0)


def reference_weights(probes, shapes, controlled, name: str) -> torch.Tensor:
    """Candidate weights straight from the paper's lines 5-10, dense, for checking."""
    teams = sorted(t for t in probes if controlled[t])
    n = math.prod(shapes[name])

    def f(team: str) -> torch.Tensor:
        d = probes[team].get(name)
        return torch.zeros(n) if d is None else d.to_dense().reshape(-1)

    rho = torch.sign(sum((f(t) for t in probes if not controlled[t]), torch.zeros(n)))
    rows = [f(t).abs() * ((f(t) != 0) & ((rho == 0) | (torch.sign(f(t)) == rho))) for t in teams]
    return torch.stack(rows)


@st.composite
def instances(draw):
    k = draw(st.integers(1, 4))
    u = draw(st.integers(0, 2))
    shapes = {
        f"t{j}": tuple(draw(st.lists(st.integers(1, 7), min_size=1, max_size=2)))
        for j in range(draw(st.integers(1, 3)))
    }
    teams = [f"c{i}" for i in range(k)] + [f"u{i}" for i in range(u)]
    density = draw(st.sampled_from([0.1, 0.3, 0.7, 1.0]))
    probes = synthetic_probes(shapes, teams, density, seed=draw(st.integers(0, 999)))
    controlled = {t: t.startswith("c") for t in teams}
    return probes, shapes, controlled


@settings(max_examples=40, deadline=None)
@given(
    inst=instances(),
    policy=st.sampled_from(POLICIES),
    unselected=st.sampled_from(["random", "frozen"]),
    seed=st.integers(0, 5),
)
def test_assignment_invariants(inst, policy, unselected, seed) -> None:
    # Prepare
    probes, shapes, controlled = inst
    k = sum(controlled.values())
    # Execute
    omap = assign_ownership(probes, shapes, controlled, policy, unselected, seed)
    again = assign_ownership(
        {t: dict(reversed(probes[t].items())) for t in reversed(list(probes))},
        dict(reversed(shapes.items())),
        dict(reversed(controlled.items())),
        policy,
        unselected,
        seed,
    )
    # Assert: reproducible and independent of dict order
    assert omap.teams == tuple(sorted(t for t in controlled if controlled[t]))
    for name in shapes:
        assert torch.equal(omap.owners[name], again.owners[name])
    masks = [omap.mask(t) for t in omap.teams]
    for name, shape in shapes.items():
        ids = omap.owners[name].reshape(-1).long()
        w = reference_weights(probes, shapes, controlled, name)
        has = (w > 0).any(0)
        assert tuple(omap.owners[name].shape) == shape
        # partition: one controllable owner each; NO_OWNER only under "frozen", where no candidate
        unowned = ids == NO_OWNER
        assert bool(((ids < k) | unowned).all())
        assert not bool(unowned[has].any())
        assert torch.equal(unowned, ~has) if unselected == "frozen" else not bool(unowned.any())
        # masks disjoint, union = assigned elements
        stack = torch.stack([m[name].reshape(-1) for m in masks]).int()
        assert torch.equal(stack.sum(0), (~unowned).int())
        # direction rule: an element with a candidate goes to a candidate (not balanced: exact)
        if policy != "balanced":
            owned = has.nonzero().squeeze(1)
            assert bool((w[ids[owned], owned] > 0).all())
        if policy == "argmax":
            owned = has.nonzero().squeeze(1)
            assert torch.equal(w[ids[owned], owned], w[:, owned].max(0).values)
    if policy == "balanced":
        n = sum(math.prod(s) for s in shapes.values())
        n_cand = sum(
            int((reference_weights(probes, shapes, controlled, m) > 0).any(0).sum()) for m in shapes
        )
        cap = capacities(omap.teams, None, n if unselected == "random" else n_cand)
        assert [omap.owned_count(t) for t in omap.teams] == cap.tolist()


def hand_example(unselected: Unselected) -> OwnershipMap:
    """Teams A, B controllable; U, V uncontrolled. Tensor h, one element per case."""
    # p0: rho=+1, A agrees, B opposes -> A.  p1: rho=-1 -> B.  p2: U+V cancel, rho=0 -> A or B
    # p3: rho=+1, A and B both oppose -> no candidate.  p4: nobody moved it -> no candidate.
    probes = {
        "A": {"h": dense([2.0, 2.0, 1.0, -1.0, 0.0]), "many": dense([1.0] * 4000)},
        "B": {"h": dense([-3.0, -3.0, 1.0, -2.0, 0.0]), "many": dense([3.0] * 4000)},
        "U": {"h": dense([1.0, -1.0, 1.0, 1.0, 0.0])},
        "V": {"h": dense([0.0, 0.0, -1.0, 0.0, 0.0])},
    }
    shapes = {"h": (5,), "many": (4000,)}
    controlled = {"A": True, "B": True, "U": False, "V": False}
    return assign_ownership(probes, shapes, controlled, "proportional", unselected, seed=3)


def test_hand_worked_proportional_with_uncontrolled_teams() -> None:
    # Execute
    frozen, rand = hand_example("frozen"), hand_example("random")
    # Assert
    h = frozen.owners["h"].tolist()
    assert h[:2] == [0, 1]  # direction decides p0 -> A, p1 -> B
    assert h[2] in (0, 1)
    assert h[3:] == [NO_OWNER, NO_OWNER]  # opposing-only and untouched: stay at base
    assert rand.owners["h"][3:].tolist() != [NO_OWNER, NO_OWNER]
    assert bool((rand.owners["h"] < 2).all())
    share_a = float((frozen.owners["many"] == 0).float().mean())
    assert share_a == pytest.approx(0.25, abs=0.025)  # |1| / (|1| + |3|)
    assert torch.equal(frozen.owners["many"], rand.owners["many"])


def test_argmax_tie_goes_to_lowest_sorted_name() -> None:
    probes = {"zeta": {"x": dense([2.0, 1.0])}, "alpha": {"x": dense([2.0, 3.0])}}
    omap = assign_ownership(probes, {"x": (2,)}, {"zeta": True, "alpha": True}, "argmax")
    assert omap.teams == ("alpha", "zeta")
    assert omap.owners["x"].tolist() == [0, 0]


def test_balanced_meets_given_shares() -> None:
    # Prepare
    shapes = {"a": (64, 32), "b": (500,)}
    probes = synthetic_probes(shapes, ["x", "y", "z"], 0.3, seed=1, scales={"x": 5.0})
    controlled = {"x": True, "y": True, "z": True}
    shares = {"x": 0.2, "y": 0.3, "z": 0.5}
    # Execute
    omap = assign_ownership(probes, shapes, controlled, "balanced", shares=shares)
    # Assert
    got = omap.summary()["share"]
    for team, share in shares.items():
        assert got[team] == pytest.approx(share, abs=1 / 2548)


def test_probe_missing_a_tensor_counts_as_zero() -> None:
    probes = {"a": {"x": dense([1.0, 0.0])}, "b": {}}
    omap = assign_ownership(probes, {"x": (2,)}, {"a": True, "b": True}, unselected="frozen")
    assert omap.owners["x"].tolist() == [0, NO_OWNER]


GOOD = {"a": {"x": dense([1.0, 2.0])}}


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"probes": {"a": {"y": dense([1.0, 2.0])}}}, OwnershipError, "unknown tensor 'y'"),
        ({"probes": {"a": {"x": dense([1.0, 2.0, 3.0])}}}, OwnershipError, r"shape \(2,\)"),
        ({"controlled": {}}, OwnershipError, "missing from `controlled`"),
        ({"controlled": {"a": True, "b": True}}, OwnershipError, "sent no probe"),
        ({"controlled": {"a": False}}, OwnershipError, "no controllable team"),
        ({"policy": "greedy"}, OwnershipError, "unknown policy 'greedy'"),
        ({"unselected": "drop"}, OwnershipError, "unknown unselected rule"),
        ({"shares": {"a": 1.0}}, OwnershipError, "only to policy 'balanced'"),
        ({"policy": "balanced", "shares": {"b": 1.0}}, OwnershipError, "exactly the controllable"),
        ({"policy": "balanced", "shares": {"a": -1.0}}, OwnershipError, "finite, >= 0"),
        ({"policy": "balanced", "shares": {"a": 0.0}}, OwnershipError, "not all zero"),
        (
            {"probes": {"a": {"x": SparseDelta((2,), torch.tensor([1, 0]), torch.ones(2))}}},
            PayloadError,
            "strictly increasing",
        ),
    ],
)
def test_bad_inputs_raise_helpful_errors(kwargs, error, match) -> None:
    args = {"probes": GOOD, "shapes": {"x": (2,)}, "controlled": {"a": True}, **kwargs}
    with pytest.raises(error, match=match):
        assign_ownership(**args)


def test_too_many_controllable_teams() -> None:
    probes: dict[str, dict[str, SparseDelta]] = {f"t{i:03d}": {} for i in range(255)}
    with pytest.raises(OwnershipError, match="at most 254"):
        assign_ownership(probes, {"x": (2,)}, {t: True for t in probes})


@pytest.mark.parametrize(
    ("values", "ok"),
    [
        ([1.0, float("nan"), 2.0], False),
        ([float("inf"), 1.0, 2.0], False),
        ([float("-inf"), float("inf"), 2.0], False),
        ([3e38, 3e38, -1.0], True),  # finite, though the float32 sum overflows
        ([-3e38, -3e38, 1.0], True),
    ],
)
def test_probe_values_must_be_finite_even_when_the_sum_overflows(values, ok) -> None:
    d = SparseDelta((5,), torch.tensor([0, 2, 4]), torch.tensor(values))
    if ok:
        d.validate("probe")
    else:
        with pytest.raises(PayloadError, match="NaN or Inf"):
            d.validate("probe")
