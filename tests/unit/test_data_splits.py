"""Invariants of the seeded splits and stratified caps (hypothesis)."""

from __future__ import annotations

import random
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from medusa_fed.training.splits import (
    balanced_cap,
    shuffle,
    split_sizes,
    stratified_cap,
    stratified_split,
)

class_sizes = st.lists(st.integers(3, 60), min_size=2, max_size=5)


def ids_of(sizes: list[int], seed: int) -> list[int]:
    ids = [c for c, n in enumerate(sizes) for _ in range(n)]
    random.Random(seed).shuffle(ids)  # any order of rows
    return ids


@settings(max_examples=40, deadline=None)
@given(class_sizes, st.integers(0, 2**32), st.sampled_from([(0.1, 0.2), (0.2, 0.2), (0.3, 0.4)]))
def test_stratified_split_partitions_every_class(
    sizes: list[int], seed: int, fractions: tuple[float, float]
) -> None:
    # Prepare
    ids = ids_of(sizes, seed)
    labels = tuple(f"c{c}" for c in range(len(sizes)))

    # Execute
    parts = stratified_split(ids, labels, fractions, random.Random(seed), "test")

    # Assert: a partition; each class split by split_sizes of its own count
    flat = [i for part in parts for i in part]
    assert sorted(flat) == list(range(len(ids)))
    for c, n in enumerate(sizes):
        got = tuple(sum(1 for i in part if ids[i] == c) for part in parts)
        assert got == split_sizes(n, fractions)
        assert min(got) >= 1


@settings(max_examples=40, deadline=None)
@given(class_sizes, st.integers(0, 2**32), st.integers(1, 200))
def test_stratified_cap_is_proportional_and_keeps_order(
    sizes: list[int], seed: int, cap: int
) -> None:
    # Prepare
    ids = ids_of(sizes, seed)
    part = list(range(len(ids)))
    random.Random(seed + 1).shuffle(part)

    # Execute
    chosen = stratified_cap(part, ids, cap)

    # Assert
    n = len(ids)
    assert len(chosen) == min(cap, n)
    assert chosen == [i for i in part if i in set(chosen)]  # a subsequence, order kept
    got = Counter(ids[i] for i in chosen)
    for c, k in enumerate(sizes):
        if cap < n:
            assert abs(got[c] - cap * k / n) < 2
        if cap >= len(sizes):
            assert got[c] >= 1


def test_shuffle_is_a_fixed_permutation_for_a_seed() -> None:
    # Prepare: golden value, guards the cross-version promise of Random.random()
    items = list(range(10))

    # Execute
    shuffle(items, random.Random(0))

    # Assert
    assert sorted(items) == list(range(10))
    assert items == GOLDEN_SHUFFLE_SEED0


GOLDEN_SHUFFLE_SEED0 = [9, 4, 0, 5, 2, 7, 1, 3, 6, 8]


@settings(max_examples=60, deadline=None)
@given(class_sizes, st.integers(0, 2**32), st.integers(1, 200))
def test_balanced_cap_takes_classes_equally_as_far_as_they_go(
    sizes: list[int], seed: int, cap: int
) -> None:
    # Prepare
    ids = ids_of(sizes, seed)
    part = list(range(len(ids)))
    random.Random(seed + 1).shuffle(part)

    # Execute
    chosen = balanced_cap(part, ids, cap)

    # Assert: the cap is reached, order kept, and a class not taken whole holds no fewer than
    # the largest class minus one (a proportional cap starves the small classes instead)
    assert len(chosen) == min(cap, len(ids))
    assert chosen == [i for i in part if i in set(chosen)]
    got = Counter(ids[i] for i in chosen)
    top = max(got.values())
    assert all(got[c] >= top - 1 for c, n in enumerate(sizes) if got[c] < n)


def test_balanced_cap_by_hand() -> None:
    # Prepare: 8 ham (0), 2 spam (1), 5 of a third class (2)
    ids = [0] * 8 + [1] * 2 + [2] * 5
    part = list(range(len(ids)))

    # Execute / Assert: 9 = 3 each; 12 = spam's 2, then 5 each for ham and the third class
    assert Counter(ids[i] for i in balanced_cap(part, ids, 9)) == {0: 4, 1: 2, 2: 3}
    assert Counter(ids[i] for i in balanced_cap(part, ids, 12)) == {0: 5, 1: 2, 2: 5}
    assert Counter(ids[i] for i in balanced_cap(part, ids, 4)) == {0: 2, 1: 1, 2: 1}
