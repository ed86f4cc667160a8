"""Classification metrics on predicted and gold label ids: accuracy and macro-F1.

Inputs are label ids as a sequence of ints, a 1-D numpy array or a 1-D torch tensor.

Macro-F1 semantics (public implementations differ, so stated here): per class c,
``F1_c = 2 TP_c / (2 TP_c + FP_c + FN_c)``; the macro average is the mean of ``F1_c`` over the
classes that occur in the gold labels **or** in the predictions. A class absent from both has
``0 / 0`` and is left out of the average (it says nothing about the model). A class predicted but
never gold, or gold but never predicted, has ``F1_c = 0`` and counts. This equals scikit-learn's
``f1_score(gold, pred, average="macro")`` with its default labels (the union of both).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from medusa_fed.errors import DataError

LabelIds = Sequence[int] | np.ndarray | torch.Tensor


def _as_ids(values: LabelIds, what: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.ndim != 1 or (array.size and not np.issubdtype(array.dtype, np.integer)):
        raise DataError(
            f"{what}: expected a 1-D sequence of integer label ids, found dtype {array.dtype} "
            f"with shape {array.shape}; metrics not computed"
        )
    return array.astype(np.int64)


def _pair(pred: LabelIds, gold: LabelIds) -> tuple[np.ndarray, np.ndarray]:
    p, g = _as_ids(pred, "pred"), _as_ids(gold, "gold")
    if p.shape != g.shape or p.size == 0:
        raise DataError(
            f"expected as many predictions as gold labels, at least one, found {p.size} "
            f"predictions and {g.size} gold labels; metrics not computed"
        )
    return p, g


def accuracy(pred: LabelIds, gold: LabelIds) -> float:
    """Share of positions where ``pred`` equals ``gold``."""
    p, g = _pair(pred, gold)
    return float((p == g).mean())


def per_class_f1(pred: LabelIds, gold: LabelIds, num_labels: int) -> dict[int, float]:
    """F1 of each class occurring in ``gold`` or ``pred`` (absent classes are not keys).

    num_labels : int
        Label ids must lie in ``[0, num_labels)``; DataError otherwise.
    """
    p, g = _pair(pred, gold)
    for name, ids in (("pred", p), ("gold", g)):
        if ids.min() < 0 or ids.max() >= num_labels:
            raise DataError(
                f"{name}: expected label ids in [0, {num_labels}), found ids from "
                f"{ids.min()} to {ids.max()}; metrics not computed"
            )
    tp = np.bincount(g[p == g], minlength=num_labels)
    pred_count = np.bincount(p, minlength=num_labels)  # TP + FP
    gold_count = np.bincount(g, minlength=num_labels)  # TP + FN
    return {
        c: float(2 * tp[c] / (pred_count[c] + gold_count[c]))
        for c in range(num_labels)
        if pred_count[c] + gold_count[c] > 0
    }


def macro_f1(pred: LabelIds, gold: LabelIds, num_labels: int) -> float:
    """Mean per-class F1 over the classes present in gold or pred (see the module docstring)."""
    scores = per_class_f1(pred, gold, num_labels)
    return float(sum(scores.values()) / len(scores))


def classification_metrics(
    pred: LabelIds, gold: LabelIds, labels: Sequence[str]
) -> dict[str, float | int]:
    """Flat, JSON-able metrics (fits a Flower MetricRecord).

    Keys: ``accuracy``, ``macro_f1``, ``num_examples``, and ``f1/<label>`` for every label that
    occurs in gold or pred.

    labels : Sequence[str]
        Label names; label id ``i`` is ``labels[i]``.
    """
    scores = per_class_f1(pred, gold, len(labels))
    out: dict[str, float | int] = {
        "accuracy": accuracy(pred, gold),
        "macro_f1": float(sum(scores.values()) / len(scores)),
        "num_examples": len(_as_ids(gold, "gold")),
    }
    out.update({f"f1/{labels[c]}": f for c, f in scores.items()})
    return out
