"""Seeded splits of example positions: stratified per class, or plain; stratified or
class-balanced caps.

All randomness comes from ``rng.random()`` of a ``random.Random(seed)``: its stream is the one
Python promises never to change for a given seed, on any platform or version, unlike
``random.shuffle`` or numpy's generators' methods. Positions within a class are taken in the
order given (file order), so a split depends on the data, the fractions and the seed only.
"""

from __future__ import annotations

import logging
import math
import random
from collections import Counter, defaultdict

from medusa_fed.errors import DataError

logger = logging.getLogger(__name__)


def shuffle(items: list[int], rng: random.Random) -> None:
    """Fisher-Yates driven by ``rng.random()``: the one stream Python promises never changes."""
    for i in range(len(items) - 1, 0, -1):
        j = int(rng.random() * (i + 1))
        items[i], items[j] = items[j], items[i]


def _round(x: float) -> int:
    return math.floor(x + 0.5)


def split_sizes(n: int, fractions: tuple[float, float]) -> tuple[int, int, int]:
    """(train, validation, test) sizes of n examples; validation and test get at least 1."""
    val_fraction, test_fraction = fractions
    test = max(1, _round(n * test_fraction))
    val = max(1, _round(n * val_fraction))
    return n - val - test, val, test


def stratified_split(
    ids: list[int],
    labels: tuple[str, ...],
    fractions: tuple[float, float],
    rng: random.Random,
    where: str,
) -> tuple[list[int], list[int], list[int]]:
    """(train, validation, test) positions; each class split by ``split_sizes`` on its own.

    ids : list[int]
        Label id of each example. labels : label names (for messages).
    fractions : tuple[float, float]
        (validation_fraction, test_fraction). where : names the data in messages.
    """
    by_label: dict[int, list[int]] = defaultdict(list)
    for i, c in enumerate(ids):
        by_label[c].append(i)
    too_few = [
        f"{labels[c]!r} {len(idx)}"
        for c, idx in sorted(by_label.items())
        if split_sizes(len(idx), fractions)[0] < 1
    ]
    if too_few:
        raise DataError(
            f"{where}: a stratified split needs, per class, at least one example in each of "
            f"train/validation/test (validation_fraction={fractions[0]:g}, "
            f"test_fraction={fractions[1]:g}); too few examples in: {', '.join(too_few)}. "
            "Add examples, or leave these classes out of the data and the label set"
        )
    absent = [labels[c] for c in range(len(labels)) if c not in by_label]
    if absent:
        logger.warning("load_task: %s: no examples of label(s) %s", where, absent)
    train: list[int] = []
    val: list[int] = []
    test: list[int] = []
    for c in sorted(by_label):
        idx = by_label[c]
        _, n_val, n_test = split_sizes(len(idx), fractions)
        shuffle(idx, rng)
        test += idx[:n_test]
        val += idx[n_test : n_test + n_val]
        train += idx[n_test + n_val :]
    for part in (train, val, test):
        shuffle(part, rng)  # interleave the classes
    return train, val, test


def plain_split(
    n: int, fractions: tuple[float, float], rng: random.Random, where: str
) -> tuple[list[int], list[int], list[int]]:
    """(train, validation, test) positions of ``n`` examples, ignoring labels."""
    n_train, n_val, n_test = split_sizes(n, fractions)
    if n_train < 1:
        raise DataError(
            f"{where}: expected enough texts for train/validation/test, found {n}; "
            "add texts or lower validation_fraction / test_fraction"
        )
    idx = list(range(n))
    shuffle(idx, rng)
    return idx[n_test + n_val :], idx[n_test : n_test + n_val], idx[:n_test]


def stratified_cap(part: list[int], ids: list[int], cap: int) -> list[int]:
    """At most ``cap`` of ``part``, classes in proportion (largest remainder), order kept.

    Every class of the split keeps at least one example when ``cap`` allows it.
    """
    if cap >= len(part):
        return part
    counts = Counter(ids[i] for i in part)
    n = len(part)
    quota = {c: cap * k // n for c, k in counts.items()}
    left = cap - sum(quota.values())
    for c in sorted(counts, key=lambda c: (-(cap * counts[c] % n), c))[:left]:
        quota[c] += 1
    if cap >= len(counts):
        for c in sorted(counts):
            if quota[c] == 0:
                donor = max(sorted(quota), key=lambda d: quota[d])
                quota[donor] -= 1
                quota[c] = 1
    return _take(part, ids, quota)


def balanced_cap(part: list[int], ids: list[int], cap: int) -> list[int]:
    """At most ``cap`` of ``part``, every class as equally as its examples allow, order kept.

    Water-filling: a class with no more examples than an equal share of what is left is taken
    whole; the classes left share the rest equally, the lowest class ids one more when it does not
    divide. So no class short of its examples holds fewer than the largest class minus one, and
    the cap is reached whenever ``part`` holds ``cap`` examples. For small evaluation subsets of
    skewed tasks, where a proportional cap lets the majority class decide accuracy (a spam
    filter's 87% ham).
    """
    if cap >= len(part):
        return part
    counts = Counter(ids[i] for i in part)
    quota: dict[int, int] = {}
    left = cap
    by_size = sorted(counts, key=lambda c: (counts[c], c))
    for rank, c in enumerate(by_size):
        if counts[c] > left // (len(by_size) - rank):
            break
        quota[c] = counts[c]
        left -= counts[c]
    open_ = sorted(c for c in counts if c not in quota)
    if open_:
        share, extra = divmod(left, len(open_))
        for rank, c in enumerate(open_):
            quota[c] = share + (rank < extra)
    return _take(part, ids, quota)


def _take(part: list[int], ids: list[int], quota: dict[int, int]) -> list[int]:
    """The first ``quota[c]`` positions of each class ``c`` in ``part``, order kept."""
    taken: Counter[int] = Counter()
    chosen = []
    for i in part:
        if taken[ids[i]] < quota[ids[i]]:
            taken[ids[i]] += 1
            chosen.append(i)
    return chosen
