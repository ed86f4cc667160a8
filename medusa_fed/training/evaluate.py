"""Evaluate a shared state + team head on a split: accuracy and macro-F1, or loss and perplexity."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from medusa_fed import progress
from medusa_fed.errors import DataError
from medusa_fed.training.loop import apply_thread_setting, encode
from medusa_fed.training.metrics import accuracy, macro_f1
from medusa_fed.training.models import BaseModel, TeamModel, labels_from_head

if TYPE_CHECKING:
    from medusa_fed.training.data import Split


def evaluate(
    base: BaseModel,
    shared: Mapping[str, torch.Tensor] | None,
    head: Mapping[str, torch.Tensor] | None,
    split: Split,
    num_labels: int | None = None,
    batch_size: int = 32,
    max_length: int = 128,
    head_seed: int = 0,
    desc: str = "evaluate",
) -> dict[str, float]:
    """Metrics of base + ``shared`` (None = base values) + ``head`` on ``split``.

    Parameters
    ----------
    num_labels : int | None (default: None)
        Required for a classifier without ``head`` (the untuned model gets a fresh head seeded
        by ``head_seed``); inferred from ``head`` otherwise.
    batch_size : int (default: 32)
    max_length : int (default: 128)
    """
    if base.is_classifier and num_labels is None:
        if head is None:
            raise DataError("evaluate: num_labels is needed when no head is given")
        num_labels = labels_from_head(head)
    team = base.build(num_labels, shared=shared, head=head, head_seed=head_seed)
    return evaluate_model(team, base.tokenizer, split, batch_size, max_length, desc)


@torch.no_grad()
def evaluate_model(
    team: TeamModel,
    tokenizer: object,
    split: Split,
    batch_size: int = 32,
    max_length: int = 128,
    desc: str = "evaluate",
) -> dict[str, float]:
    """Like :func:`evaluate` on an already built :class:`TeamModel`."""
    if len(split) == 0:
        raise DataError(f"{desc}: the split is empty; nothing to evaluate")
    apply_thread_setting()
    causal = team.num_labels is None
    team.module.eval()
    preds = [0] * len(split)
    loss_sum, tokens = 0.0, 0
    order = by_length(split)  # batches of similar length: less padding, same predictions
    total = -(-len(split) // batch_size)
    quiet = True if progress.current() is not None else None  # a display renders the batches
    for i, lo in enumerate(
        tqdm(range(0, len(split), batch_size), desc=desc, unit="batch", leave=False, disable=quiet)
    ):
        progress.emit("step", what=desc, step=i + 1, total=total, loss=None)
        rows = order[lo : lo + batch_size]
        batch = encode(tokenizer, split, rows, max_length, causal)
        out = team.module(**batch)
        if causal:
            n = int((batch["labels"][:, 1:] != -100).sum())  # predicted tokens in the batch
            loss_sum += float(out.loss) * n
            tokens += n
        else:
            for row, pred in zip(rows, out.logits.argmax(-1).tolist(), strict=True):
                preds[row] = pred
    if causal:
        loss = loss_sum / max(1, tokens)
        return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": float(tokens)}
    gold = list(split.label_ids)
    n_labels = team.num_labels or 0
    return {
        "accuracy": accuracy(preds, gold),
        "macro_f1": macro_f1(preds, gold, n_labels),
        "examples": float(len(gold)),
    }


def by_length(split: Split) -> list[int]:
    """Row indices ordered by text length (characters, both texts of a pair), so that each
    padded batch holds examples of similar length; ties keep their order."""
    pairs = split.text_pairs or ("",) * len(split)
    return sorted(range(len(split)), key=lambda i: len(split.texts[i]) + len(pairs[i]))
