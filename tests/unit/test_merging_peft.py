"""TIES / DARE / task arithmetic against peft.utils.merge_utils on the same tensors.

Where the semantics match, results are compared bit for bit (``torch.equal``) with scale 1 and
within fp32 rounding with another scale (PEFT multiplies each delta by its weight before combining;
we multiply the combined delta once). DARE: PEFT draws its drop mask from the *global* generator; we
reseed the global generator with our per-(tensor, branch) seed before each PEFT prune, so both
sides drop the identical elements, and then compare the whole merge.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from peft.utils import merge_utils as peft

from medusa_fed.merging import (
    MergeSpec,
    apply_keep,
    dare_keep_mask,
    dare_seed,
    magnitude_keep_mask,
    merge_tensor,
    trim_count,
)
from medusa_fed.merging.sparsify import magnitude_trim_

BRANCHES = ("alpha", "beta", "gamma")


def _deltas(seed: int, shape: tuple[int, ...], n: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {b: torch.randn(shape, generator=g) for b in BRANCHES[:n]}


def _ours(method: str, deltas: dict[str, torch.Tensor], **kw: float) -> torch.Tensor:
    """Our merged delta (a zero base makes merged == delta exactly)."""
    base = torch.zeros(next(iter(deltas.values())).shape)
    return merge_tensor("enc.w", base, deltas, MergeSpec(method, **kw))  # type: ignore[arg-type]


def _peft_dare_pruned(deltas: dict[str, torch.Tensor], drop_rate: float, seed: int):
    """PEFT's own random prune of each branch, the global generator seeded as our drop masks."""
    out = []
    for branch in sorted(deltas):
        torch.manual_seed(dare_seed(seed, "enc.w", branch))
        out.append(peft.prune(deltas[branch], 1.0 - drop_rate, "random", rescale=True))
    return out


def test_ties_hand_worked_and_equal_to_peft():
    # Prepare: density 0.5 keeps 3 of 6 per branch
    #   a = [ 4,   -1, .5, -3,  2, 0  ] -> trimmed [ 4,   0, 0, -3,  2, 0]
    #   b = [-1.5,  5, -1,  1, -2, .25] -> trimmed [-1.5, 5, 0,  0, -2, 0]
    #   sum [2.5, 5, 0, -3, 0, 0] -> elected [+, +, +, -, + (zero sum), +]
    #   agreeing means: [4 (b disagrees), 5, nothing -> 0, -3, 2 (b disagrees), nothing -> 0]
    deltas = {
        "a": torch.tensor([4.0, -1, 0.5, -3, 2, 0]),
        "b": torch.tensor([-1.5, 5, -1, 1, -2, 0.25]),
    }
    # Execute
    ours = _ours("ties", deltas, density=0.5)
    reference = peft.ties(list(deltas.values()), torch.ones(2), density=0.5)
    # Assert
    assert ours.tolist() == [4.0, 5.0, 0.0, -3.0, 2.0, 0.0]
    assert torch.equal(ours, reference)


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(2, 3),
    density=st.sampled_from([0.1, 0.2, 0.5, 1.0]),
    scale=st.sampled_from([1.0, 0.7]),
)
def test_ties_and_task_arithmetic_match_peft(seed, n, density, scale):
    # Prepare: 20 x 30 = 600 elements, so density * numel is an integer (PEFT floors, we ceil)
    deltas = _deltas(seed, (20, 30), n)
    listed = [deltas[b] for b in sorted(deltas)]
    weights = torch.full((n,), scale)
    # Execute
    ties = _ours("ties", deltas, density=density, scale=scale)
    ta = _ours("task_arithmetic", deltas, scale=scale)
    ties_ref = peft.ties(listed, weights, density=density)  # density 1: PEFT warns, keeps all
    ta_ref = peft.task_arithmetic(listed, weights)
    # Assert
    if scale == 1.0:
        assert torch.equal(ta, ta_ref)
        assert torch.equal(ties, ties_ref)
    else:
        torch.testing.assert_close(ta, ta_ref, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(ties, ties_ref, rtol=1e-6, atol=1e-6)


def test_magnitude_trim_matches_peft_magnitude_prune():
    # Prepare
    deltas = _deltas(7, (40, 25), 3)
    listed = [deltas[b] for b in sorted(deltas)]
    # Execute: our trim step, summed (PEFT's magnitude_prune = trim + weighted sum)
    ours = sum(apply_keep(d, magnitude_keep_mask(d, 0.2)) for d in listed)
    reference = peft.magnitude_prune(listed, torch.ones(3), density=0.2)
    # Assert
    assert torch.equal(ours, reference)
    assert int((magnitude_keep_mask(listed[0], 0.2)).sum()) == 200


def test_trim_count_is_ceil_without_float_dust():
    # Execute / Assert: 0.2 * 35 = 7.000000000000001 in floats
    assert trim_count(35, 0.2) == 7
    assert trim_count(3, 0.2) == 1  # a small tensor keeps one entry (PEFT's floor keeps 0)
    assert trim_count(10, 1.0) == 10


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(2, 3),
    drop_rate=st.sampled_from([0.1, 0.5, 0.9]),
)
def test_dare_methods_match_peft_with_identical_drop_masks(seed, n, drop_rate):
    # Prepare
    deltas = _deltas(seed, (16, 24), n)
    pruned = _peft_dare_pruned(deltas, drop_rate, seed)
    # Execute
    ta = _ours("dare_task_arithmetic", deltas, drop_rate=drop_rate, seed=seed)
    lin = _ours("dare_linear", deltas, drop_rate=drop_rate, seed=seed)
    ties = _ours("dare_ties", deltas, drop_rate=drop_rate, seed=seed)
    # PEFT's dare_linear / dare_ties after its random prune, i.e. its combine steps:
    ta_ref = peft.task_arithmetic(pruned, torch.ones(n))
    stacked = torch.stack(pruned)
    ties_ref = peft.disjoint_merge(stacked, peft.calculate_majority_sign_mask(stacked, "total"))
    # Assert
    assert torch.equal(ta, ta_ref)
    torch.testing.assert_close(lin, ta_ref / n, rtol=1e-6, atol=1e-7)
    assert torch.equal(ties, ties_ref)


def test_peft_dare_linear_draws_the_same_mask_as_ours():
    # Prepare: one branch, so PEFT's whole dare_linear draws exactly one mask
    delta = torch.randn(50, 20, generator=torch.Generator().manual_seed(1))
    seed = dare_seed(4, "enc.w", "alpha")
    # Execute
    torch.manual_seed(seed)
    reference = peft.dare_linear([delta], torch.ones(1), density=0.3)
    ours = _ours("dare_task_arithmetic", {"alpha": delta}, drop_rate=0.7, seed=4)
    # Assert
    assert torch.equal(ours, reference)


def test_dare_masks_are_seeded_per_tensor_and_branch_and_drop_p():
    # Prepare
    shape = (200, 500)  # 100,000 draws
    seeds = {
        "a": dare_seed(0, "w", "a"),
        "a_again": dare_seed(0, "w", "a"),
        "b": dare_seed(0, "w", "b"),
        "other_tensor": dare_seed(0, "v", "a"),
        "other_seed": dare_seed(1, "w", "a"),
    }
    # Execute
    masks = {k: dare_keep_mask(shape, 0.9, s) for k, s in seeds.items()}
    # Assert: reproducible, distinct across branch / tensor / seed
    assert torch.equal(masks["a"], masks["a_again"])
    for other in ("b", "other_tensor", "other_seed"):
        assert not torch.equal(masks["a"], masks[other])
    # kept fraction ~ 1 - p = 0.1: binomial sd = sqrt(1e5 * .1 * .9) ~ 95; allow 6 sd
    assert abs(int(masks["a"].sum()) - 10_000) < 570
    assert bool(dare_keep_mask(shape, 0.0, 5).all())


def test_dare_rescale_preserves_the_mean_delta():
    # Prepare: a constant delta; survivors are scaled by 1 / (1 - p)
    delta = torch.full((100_000,), 0.01)
    # Execute
    merged = _ours("dare_task_arithmetic", {"a": delta}, drop_rate=0.8, seed=2)
    # Assert
    kept = merged[merged != 0]
    torch.testing.assert_close(kept, torch.full_like(kept, 0.01 / 0.2), rtol=1e-6, atol=0)
    assert abs(float(merged.mean()) - 0.01) < 0.0005  # sd of the mean ~ 0.00005


@pytest.mark.parametrize(
    ("dare", "plain"),
    [("dare_linear", "linear"), ("dare_task_arithmetic", "task_arithmetic")],
)
def test_dare_with_drop_rate_zero_is_the_plain_method(dare, plain):
    # Prepare
    deltas = _deltas(3, (9, 11), 3)
    # Execute / Assert
    assert torch.equal(_ours(dare, deltas, drop_rate=0.0), _ours(plain, deltas))
    assert torch.equal(
        _ours("dare_ties", deltas, drop_rate=0.0), _ours("ties", deltas, density=1.0)
    )


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    numel=st.integers(1, 5000),
    density=st.floats(0.001, 1.0),
)
def test_magnitude_keep_mask_is_exactly_the_topk_set(seed, numel, density):
    # Prepare: continuous values, so the k-th magnitude is not tied
    delta = torch.randn(numel, generator=torch.Generator().manual_seed(seed))
    k = trim_count(numel, density)
    expected = torch.zeros(numel, dtype=torch.bool)
    expected[torch.topk(delta.abs(), k).indices] = True
    # Execute
    keep = magnitude_keep_mask(delta, density)
    # Assert
    assert torch.equal(keep, expected)


def test_magnitude_keep_mask_takes_tied_magnitudes_by_position():
    # Prepare: k = 4 of 8; |2| first, then three of the four magnitudes tied at 1
    delta = torch.tensor([0.0, 1, -1, 1, 0, -1, 2, 0])
    # Execute
    keep = magnitude_keep_mask(delta, 0.5)
    # Assert
    assert keep.tolist() == [False, True, True, True, False, False, True, False]


@pytest.mark.parametrize("density", [0.003, 0.5, 0.97])
def test_trim_across_chunks_with_ties_is_the_stable_sorted_top_k(density):
    # Prepare: 5M entries (two of the select's 4M-entry chunks), magnitudes on a coarse grid so the
    # cut is tied many times over, 30% exact zeros; the reference is an independent stable sort
    g = torch.Generator().manual_seed(7)
    delta = torch.round(torch.randn(5_000_000, generator=g) * 20) / 400
    delta[torch.rand(delta.shape, generator=g) < 0.3] = 0.0
    k = trim_count(delta.numel(), density)
    order = torch.sort(delta.abs(), descending=True, stable=True).indices
    expected = torch.zeros(delta.numel(), dtype=torch.bool)
    expected[order[:k]] = True
    # Execute
    keep = magnitude_keep_mask(delta, density)
    trimmed, cut = magnitude_trim_(delta.clone(), density, torch.empty_like(delta))
    # Assert: the kept set; the in-place trim keeps the same values (a zero kept or not is a zero)
    assert torch.equal(keep, expected)
    assert torch.equal(trimmed, torch.where(expected, delta, 0.0))
    assert cut is not None
    assert cut.threshold == 0.0 or cut.equal > cut.ties > 0  # the cut falls inside a tie
