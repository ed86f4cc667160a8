"""Medusa's Algorithm 3 merge and the simple baselines: exactness, order, hand-worked elections."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from medusa_fed.errors import ConfigError, MergeError
from medusa_fed.merging import (
    METHODS,
    MergeChoice,
    MergeSpec,
    merge_report,
    merge_states,
    merge_tensor,
    merge_tensor_with_report,
)

DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _disjoint(seed: int, shape: tuple[int, ...], branches: int, dtype: torch.dtype):
    """A base and ``branches`` deltas with disjoint supports (some elements owned by nobody)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g).to(dtype)
    owner = torch.randint(-1, branches, shape, generator=g)  # -1: nobody
    deltas = {
        f"team{i}": torch.where(owner == i, torch.randn(shape, generator=g) * 1e-2, 0.0)
        for i in range(branches)
    }
    return base, deltas


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    shape=st.sampled_from([(7,), (5, 3), (2, 3, 4), (64, 33)]),
    branches=st.integers(1, 4),
    dtype=st.sampled_from(DTYPES),
    n_uncontrolled=st.integers(0, 1),
)
def test_medusa_disjoint_is_bit_exact_base_plus_sum(seed, shape, branches, dtype, n_uncontrolled):
    # Prepare
    base, deltas = _disjoint(seed, shape, branches, dtype)
    uncontrolled = sorted(deltas)[:n_uncontrolled]
    total = torch.zeros(shape)
    for name in sorted(deltas):
        total = total + deltas[name]
    expected = (base.float() + total).to(dtype)
    # Execute
    merged = merge_tensor("w", base, deltas, MergeSpec("medusa"), uncontrolled)
    reversed_order = merge_tensor("w", base, dict(reversed(deltas.items())), MergeSpec("medusa"))
    # Assert
    assert merged.dtype == dtype
    assert torch.equal(merged, expected)
    assert torch.equal(reversed_order, expected)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), method=st.sampled_from(sorted(METHODS)))
def test_every_method_is_independent_of_branch_order(seed, method):
    # Prepare: dense, overlapping deltas (the hard case for order)
    g = torch.Generator().manual_seed(seed)
    base = {"a": torch.randn(6, 5, generator=g), "b": torch.randn(10, generator=g)}
    deltas = {t: {k: torch.randn(v.shape, generator=g) for k, v in base.items()} for t in "xyz"}
    shuffled = {t: dict(reversed(deltas[t].items())) for t in ("z", "x", "y")}
    spec = MergeSpec(method, density=0.5, drop_rate=0.5, seed=3)  # type: ignore[arg-type]
    # Execute
    first = merge_states(base, deltas, spec, uncontrolled=["x", "y", "z"])
    second = merge_states(base, shuffled, spec, uncontrolled=["z", "y", "x"])
    # Assert
    assert list(first) == list(base)
    for name in base:
        assert torch.equal(first[name], second[name])


def test_medusa_sign_election_hand_worked():
    # Prepare: base 1.0 everywhere; "a", "b" controlled (disjoint), "u", "v" uncontrolled.
    # element: 0: a=+.25, u=-.75 -> sum -.5, rho=-1, mean{-.75} = -.75        -> 0.25
    #          1: a=+.5,  u=+.25 -> sum +.75, rho=+1, mean{.5, .25} = .375     -> 1.375
    #          2: a=+.5,  u=-.5  -> sum 0, rho=0, nothing agrees, delta 0      -> 1.0
    #          3: a=+.125 only   -> plain sum                                  -> 1.125
    #          4: u=-.625 only   -> plain sum                                  -> 0.375
    #          5: b=+.25, u=+.75, v=-.5 -> sum +.5, rho=+1, mean{.25,.75}=.5  -> 1.5
    #          6: u=+.25, v=+.5  -> two uncontrolled overlap: mean{.25,.5}     -> 1.375
    base = torch.ones(7)
    deltas = {
        "a": torch.tensor([0.25, 0.5, 0.5, 0.125, 0.0, 0.0, 0.0]),
        "b": torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 0.25, 0.0]),
        "u": torch.tensor([-0.75, 0.25, -0.5, 0.0, -0.625, 0.75, 0.25]),
        "v": torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, -0.5, 0.5]),
    }
    # Execute
    merged, report = merge_tensor_with_report(
        "w", base, deltas, MergeSpec("medusa"), uncontrolled={"u", "v"}
    )
    # Assert
    assert merged.tolist() == [0.25, 1.375, 1.0, 1.125, 0.375, 1.5, 1.375]
    assert report.overlap == 5  # elements 0, 1, 2, 5, 6
    assert report.sign_elected == 5
    assert report.discarded == 3  # a at 0, a and u at 2, v at 5
    assert report.changed == 6  # element 2 kept the base
    assert report.touched == {"a": 4, "b": 1, "u": 6, "v": 2}


def test_medusa_scale_applies_to_elected_and_disjoint_deltas():
    # Prepare: element 0 elected (mean .375), element 1 plain (.125)
    base = torch.zeros(2)
    deltas = {"a": torch.tensor([0.5, 0.125]), "u": torch.tensor([0.25, 0.0])}
    # Execute
    merged = merge_tensor("w", base, deltas, MergeSpec("medusa", scale=2.0), uncontrolled=["u"])
    # Assert
    assert merged.tolist() == [0.75, 0.25]


def test_controlled_overlap_raises_naming_tensor_branches_and_count():
    # Prepare: "a" and "c" both changed elements 1 and 3; "b" overlaps nobody
    base = torch.zeros(5)
    deltas = {
        "a": torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0]),
        "b": torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0]),
        "c": torch.tensor([0.0, -1.0, 0.0, 2.0, 0.0]),
    }
    # Execute / Assert
    expected = r"enc\.w: controlled branches 'a' and 'c' both changed 2 element"
    with pytest.raises(MergeError, match=expected):
        merge_tensor("enc.w", base, deltas, MergeSpec("medusa"))
    # the same overlap is fine once "c" is uncontrolled (it is then sign-elected)
    merged = merge_tensor("enc.w", base, deltas, MergeSpec("medusa"), uncontrolled=["c"])
    assert merged.tolist() == [1.0, 0.0, 1.0, 1.5, 0.0]


@pytest.mark.parametrize("method", ["ties", "medusa"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_delta_raises_naming_branch_and_tensor(bad, method):
    # Prepare
    base = {"layer.0.weight": torch.zeros(3)}
    deltas = {"ok": {"layer.0.weight": torch.zeros(3)}, "legal": {"layer.0.weight": torch.zeros(3)}}
    deltas["legal"]["layer.0.weight"][1] = bad
    # Execute / Assert
    with pytest.raises(MergeError, match=r"layer\.0\.weight: branch 'legal' sent 1 NaN/Inf"):
        merge_states(base, deltas, MergeSpec(method))


def test_shape_mismatch_raises_with_both_shapes():
    # Prepare
    base = torch.zeros(4, 3)
    # Execute / Assert
    with pytest.raises(MergeError, match=r"shape \(3, 4\), expected the base's shape \(4, 3\)"):
        merge_tensor("w", base, {"a": torch.zeros(3, 4)}, MergeSpec("linear"))


def test_state_level_errors():
    # Prepare
    base = {"w": torch.zeros(2)}
    # Execute / Assert
    with pytest.raises(MergeError, match="tensor\\(s\\) the base does not have"):
        merge_states(base, {"a": {"w": torch.zeros(2), "x": torch.zeros(1)}}, MergeSpec("medusa"))
    with pytest.raises(MergeError, match=r"uncontrolled branch\(es\) \['q'\]"):
        merge_states(base, {"a": {"w": torch.zeros(2)}}, MergeSpec("medusa"), uncontrolled=["q"])
    with pytest.raises(MergeError, match="at least one branch"):
        merge_states(base, {}, MergeSpec("medusa"))


def test_spec_validation():
    # Execute / Assert
    with pytest.raises(ConfigError, match="expected one of medusa, linear, task_arithmetic, ties"):
        MergeSpec("fedavg")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"density must be in \(0, 1\], found 0"):
        MergeSpec("ties", density=0.0)
    with pytest.raises(ConfigError, match=r"drop_rate must be in \[0, 1\), found 1"):
        MergeSpec("dare_ties", drop_rate=1.0)
    with pytest.raises(ConfigError, match="scale must be a finite number"):
        MergeSpec("medusa", scale=float("nan"))
    choice = MergeChoice.parse("dare-ties:seed=3:drop_rate=0.5")
    assert choice.spec(choice.candidates()[0], seed=0).seed == 3  # its own seed wins
    assert MergeChoice.parse("dare_ties").spec({}, seed=7).seed == 7  # else the run's
    grid = MergeChoice.parse("ties:density=0.2|0.5:scale=1")
    assert grid.label == "ties:density=0.2|0.5:scale=1"
    assert grid.candidates() == [{"density": 0.2, "scale": 1.0}, {"density": 0.5, "scale": 1.0}]
    with pytest.raises(ConfigError, match=r"density must be in \(0, 1\], found 2"):
        MergeChoice.parse("ties:density=0.2|2")  # refused when parsed, before any training
    assert set(METHODS) == {
        "medusa", "linear", "task_arithmetic", "ties",
        "dare_linear", "dare_task_arithmetic", "dare_ties", "tsv_m", "iso_c", "iso_cts",
        "medusa_tsv",
    }  # fmt: skip


def test_linear_is_the_average_of_the_tuned_models_and_counts_missing_tensors():
    # Prepare: "b" did not send "v" (a zero delta there)
    g = torch.Generator().manual_seed(0)
    base = {"w": torch.randn(4, 4, generator=g), "v": torch.randn(3, generator=g)}
    deltas = {
        "a": {"w": torch.randn(4, 4, generator=g), "v": torch.randn(3, generator=g)},
        "b": {"w": torch.randn(4, 4, generator=g)},
    }
    tuned_w = [base["w"] + deltas[t]["w"] for t in "ab"]
    # Execute
    merged = merge_states(base, deltas, MergeSpec("linear"))
    # Assert
    torch.testing.assert_close(merged["w"], torch.stack(tuned_w).mean(0), rtol=0, atol=1e-6)
    torch.testing.assert_close(merged["v"], base["v"] + deltas["a"]["v"] / 2, rtol=0, atol=1e-6)


def test_task_arithmetic_scale():
    # Prepare
    base = torch.tensor([1.0, 2.0, 3.0])
    deltas = {"a": torch.tensor([0.5, 0.0, -1.0]), "b": torch.tensor([0.25, 1.0, -1.0])}
    # Execute
    merged = merge_tensor("w", base, deltas, MergeSpec("task_arithmetic", scale=0.5))
    # Assert: base + 0.5 * (a + b)
    assert merged.tolist() == [1.375, 2.5, 2.0]


def test_report_totals_and_lazy_single_read():
    # Prepare: a lazy branch mapping that counts reads (merging streams tensor by tensor)
    class Lazy(dict):
        reads: list[str] = []

        def __getitem__(self, key):
            Lazy.reads.append(key)
            return super().__getitem__(key)

    base = {"w": torch.zeros(4), "v": torch.zeros(2)}
    deltas = {
        "a": Lazy(w=torch.tensor([1.0, 0, 0, 0]), v=torch.tensor([1.0, 0])),
        "b": Lazy(w=torch.tensor([0, 2.0, 0, 0])),
    }
    # Execute
    report = merge_report(base, deltas, MergeSpec("medusa"))
    # Assert
    assert sorted(Lazy.reads) == ["v", "w", "w"]
    assert report["totals"]["numel"] == 6
    assert report["totals"]["changed"] == 3
    assert report["totals"]["overlap"] == 0
    assert report["totals"]["touched"] == {"a": 2, "b": 1}
    assert report["tensors"]["w"]["touched"] == {"a": 1, "b": 1}
    assert report["spec"]["method"] == "medusa"
