"""Accuracy and macro-F1 against hand-worked examples, plus invariants."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from medusa_fed.errors import DataError
from medusa_fed.training.metrics import (
    accuracy,
    classification_metrics,
    macro_f1,
    per_class_f1,
)

# Hand-worked: 4 classes, class 3 occurs in neither list.
#   class 0: TP 2, predicted 2, gold 3 -> F1 = 2*2 / (2+3) = 4/5
#   class 1: TP 1, predicted 2, gold 2 -> F1 = 2*1 / (2+2) = 1/2
#   class 2: TP 1, predicted 2, gold 1 -> F1 = 2*1 / (2+1) = 2/3
#   macro over classes 0..2 = (4/5 + 1/2 + 2/3) / 3 = 59/90; accuracy = 4/6
GOLD = [0, 0, 0, 1, 1, 2]
PRED = [0, 0, 1, 1, 2, 2]


def test_macro_f1_matches_hand_worked_example_and_skips_absent_class() -> None:
    # Execute
    scores = per_class_f1(PRED, GOLD, num_labels=4)
    macro = macro_f1(PRED, GOLD, num_labels=4)

    # Assert
    assert scores == pytest.approx({0: 4 / 5, 1: 1 / 2, 2: 2 / 3})
    assert macro == pytest.approx(59 / 90)
    assert accuracy(PRED, GOLD) == pytest.approx(4 / 6)


def test_class_predicted_but_never_gold_counts_as_zero() -> None:
    # Prepare: class 1 is only predicted (F1 0); class 0: TP 1, predicted 1, gold 2 -> 2/3
    gold, pred = [0, 0], [0, 1]

    # Execute
    macro = macro_f1(pred, gold, num_labels=3)

    # Assert
    assert macro == pytest.approx((2 / 3 + 0.0) / 2)


def test_numpy_torch_and_list_inputs_agree() -> None:
    # Execute
    values = [
        macro_f1(np.array(PRED), np.array(GOLD), 4),
        macro_f1(torch.tensor(PRED), torch.tensor(GOLD), 4),
        macro_f1(PRED, GOLD, 4),
    ]

    # Assert
    assert values == pytest.approx([59 / 90] * 3)


def test_classification_metrics_is_flat_with_label_names() -> None:
    # Execute
    out = classification_metrics(PRED, GOLD, labels=["a", "b", "c", "d"])

    # Assert
    assert out == pytest.approx(
        {
            "accuracy": 4 / 6,
            "macro_f1": 59 / 90,
            "num_examples": 6,
            "f1/a": 4 / 5,
            "f1/b": 1 / 2,
            "f1/c": 2 / 3,
        }
    )
    assert "f1/d" not in out


@pytest.mark.parametrize(
    ("pred", "gold", "num_labels", "message"),
    [
        ([0, 1], [0], 2, "2 predictions and 1 gold labels"),
        ([], [], 2, "at least one"),
        ([0, 2], [0, 1], 2, "expected label ids in [0, 2)"),
        ([0.5, 1.0], [0, 1], 2, "integer label ids"),
        ([[0, 1]], [[0, 1]], 2, "1-D"),
    ],
)
def test_bad_inputs_raise_data_error(
    pred: list[object], gold: list[object], num_labels: int, message: str
) -> None:
    # Execute / Assert
    with pytest.raises(DataError) as err:
        macro_f1(pred, gold, num_labels)  # type: ignore[arg-type]
    assert message in str(err.value)


label_lists = st.integers(1, 30).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(0, 3), min_size=n, max_size=n),
        st.lists(st.integers(0, 3), min_size=n, max_size=n),
    )
)


@settings(max_examples=50, deadline=None)
@given(label_lists)
def test_macro_f1_bounded_and_one_only_when_perfect(lists: tuple[list[int], list[int]]) -> None:
    # Prepare
    pred, gold = lists

    # Execute
    score = macro_f1(pred, gold, 4)
    perfect = macro_f1(gold, gold, 4)

    # Assert
    assert 0.0 <= score <= 1.0
    assert perfect == 1.0
    assert (score == 1.0) == (pred == gold)
