"""Evaluate a shared state + team head on a split.

A classifier: accuracy and macro-F1 of its head. A causal LM on a labelled task (a ``prompter``):
rank-classification accuracy and macro-F1 over the answer words, and the exact match of greedy
generation (:mod:`medusa_fed.training.instruct`). A causal LM on raw text: loss and perplexity.
A causal LM on a team's instruction file (a :class:`~medusa_fed.training.chat.ChatTask`): exact
match and SQuAD-style token F1 of greedy generation against the reference completion, the mean
negative log-likelihood of the reference's tokens (``loss``) and its ``perplexity``; when the
completions form a closed answer set also rank-classification ``accuracy`` and ``macro_f1`` over
that set. The report's main column: ``accuracy`` where it exists, ``exact_match`` otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from medusa_fed import progress
from medusa_fed.errors import DataError
from medusa_fed.training.chat import ChatTask, Framing, chat_example, choice_ids, token_f1
from medusa_fed.training.device import autocast, on_device, resolve_device
from medusa_fed.training.dialogues import normalize_answer
from medusa_fed.training.instruct import (
    Prompter,
    answer_ids,
    prompt_ids,
    score_and_generate,
)
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
    prompter: Framing | None = None,
    device: str = "auto",
) -> dict[str, float]:
    """Metrics of base + ``shared`` (None = base values) + ``head`` on ``split``.

    Parameters
    ----------
    num_labels : int | None (default: None)
        Required for a classifier without ``head`` (the untuned model gets a fresh head seeded
        by ``head_seed``); inferred from ``head`` otherwise.
    batch_size : int (default: 32)
    max_length : int (default: 128)
    device : str (default: "auto")
        auto (CUDA when present), cpu, cuda or cuda:N; bf16 autocast on CUDA.
    """
    if base.is_classifier and num_labels is None:
        if head is None:
            raise DataError("evaluate: num_labels is needed when no head is given")
        num_labels = labels_from_head(head)
    team = base.build(num_labels, shared=shared, head=head, head_seed=head_seed)
    return evaluate_model(
        team, base.tokenizer, split, batch_size, max_length, desc, prompter, device
    )


@torch.no_grad()
def evaluate_model(
    team: TeamModel,
    tokenizer: object,
    split: Split,
    batch_size: int = 32,
    max_length: int = 128,
    desc: str = "evaluate",
    prompter: Framing | None = None,
    device: str = "auto",
) -> dict[str, float]:
    """Like :func:`evaluate` on an already built :class:`TeamModel` (back on CPU afterwards).

    Instruction scoring of a causal LM (``prompter``) runs on CPU whatever ``device`` says: its
    cached-prompt generation builds CPU tensors (not yet moved to a device).
    """
    if len(split) == 0:
        raise DataError(f"{desc}: the split is empty; nothing to evaluate")
    apply_thread_setting()
    if isinstance(prompter, ChatTask):
        return _evaluate_dialogues(team, tokenizer, split, prompter, batch_size, max_length, desc)
    if prompter is not None:
        return _evaluate_instructions(
            team, tokenizer, split, prompter, batch_size, max_length, desc
        )
    where = resolve_device(device)
    with on_device(team.module, where):
        return _evaluate(team, tokenizer, split, batch_size, max_length, desc, where)


def _evaluate(
    team: TeamModel,
    tokenizer: object,
    split: Split,
    batch_size: int,
    max_length: int,
    desc: str,
    device: torch.device,
    task: ChatTask | None = None,
) -> dict[str, float]:
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
        batch = encode(tokenizer, split, rows, max_length, causal, task)
        with autocast(device):
            out = team.module(**{k: v.to(device) for k, v in batch.items()})
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


def _evaluate_instructions(
    team: TeamModel,
    tokenizer: object,
    split: Split,
    prompter: Prompter,
    batch_size: int,
    max_length: int,
    desc: str,
) -> dict[str, float]:
    team.module.eval()
    choices = [answer_ids(tokenizer, a) for a in prompter.answers]
    longest = max(len(c) for c in choices)
    gold_words = [normalize_answer(a) for a in prompter.answers]
    preds = [0] * len(split)
    exact = 0
    order = by_length(split)
    for lo in tqdm(
        range(0, len(split), batch_size), desc=desc, unit="batch", leave=False, disable=None
    ):
        rows = order[lo : lo + batch_size]
        prompts = [prompt_ids(tokenizer, prompter, split.texts[i], max_length) for i in rows]
        scores, generated = score_and_generate(team.module, tokenizer, prompts, choices, longest)
        for row, pred, tokens in zip(rows, scores.argmax(-1).tolist(), generated, strict=True):
            preds[row] = pred
            text = tokenizer.decode(tokens, skip_special_tokens=True)  # type: ignore[attr-defined]
            exact += normalize_answer(text) == gold_words[split.label_ids[row]]
    gold = list(split.label_ids)
    return {
        "accuracy": accuracy(preds, gold),
        "macro_f1": macro_f1(preds, gold, len(prompter.answers)),
        "exact_match": exact / len(split),
        "examples": float(len(gold)),
    }


def _evaluate_dialogues(
    team: TeamModel,
    tokenizer: object,
    split: Split,
    task: ChatTask,
    batch_size: int,
    max_length: int,
    desc: str,
) -> dict[str, float]:
    """Loss over the reference answers' tokens, then one pass that ranks the closed answer set
    (if any) and generates greedily, up to as many tokens as the example's fitted answer side
    (:func:`~medusa_fed.training.chat.fit`); each generation is compared with the whole
    reference completion.

    Generation batches hold examples of similar answer length; a batch generates up to its
    longest answer, so a prompt is cut further from the left where prompt plus that length would
    pass ``max_length`` (no position beyond ``max_length`` is ever fed)."""
    metrics = _evaluate(
        team, tokenizer, split, batch_size, max_length, desc, torch.device("cpu"), task
    )
    choices = [list(c) for c in choice_ids(tokenizer, task, max_length)]
    pairs = [chat_example(tokenizer, d, max_length, task) for d in split.dialogues]
    order = sorted(range(len(split)), key=lambda i: (len(pairs[i][1]), len(pairs[i][0])))
    preds = [0] * len(split)
    exact, f1 = 0, 0.0
    for lo in tqdm(
        range(0, len(split), batch_size), desc=desc, unit="batch", leave=False, disable=None
    ):
        rows = order[lo : lo + batch_size]
        limit = max(len(pairs[i][1]) for i in rows)
        prompts = [pairs[i][0][max(0, len(pairs[i][0]) + limit - max_length) :] for i in rows]
        scores, generated = score_and_generate(team.module, tokenizer, prompts, choices, limit)
        for k, row in enumerate(rows):
            tokens = generated[k][: len(pairs[row][1])]  # no longer than this example's answer
            text = tokenizer.decode(tokens, skip_special_tokens=True)  # type: ignore[attr-defined]
            reference = split.dialogues[row].completion
            exact += normalize_answer(text) == normalize_answer(reference)
            f1 += token_f1(text, reference)
            if choices:
                preds[row] = int(scores[k].argmax())
    n = len(split)
    out = {"exact_match": exact / n, "token_f1": f1 / n, **metrics, "examples": float(n)}
    if choices:
        gold = list(split.label_ids)
        out |= {"accuracy": accuracy(preds, gold), "macro_f1": macro_f1(preds, gold, len(choices))}
    return out


def by_length(split: Split) -> list[int]:
    """Row indices ordered by text length (characters, both texts of a pair), so that each
    padded batch holds examples of similar length; ties keep their order."""
    pairs = split.text_pairs or ("",) * len(split)
    return sorted(range(len(split)), key=lambda i: len(split.texts[i]) + len(pairs[i]))
