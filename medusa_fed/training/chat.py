"""A team's instruction examples (:class:`~medusa_fed.training.dialogues.Dialogue`) as token ids
for a causal LM, and how its free-form answers are compared.

* **Prompt**: the dialogue's turns through the model's chat template, the assistant's generation
  prompt added (a tokenizer without a template gets ``Role: content`` lines ending in
  ``Assistant:``).
* **Answer**: the completion's tokens, then the end-of-turn token (as for a bundled task's label
  word, :func:`~medusa_fed.training.instruct.answer_ids`). Training puts loss on these only.
* **Fitting max-length**: the answer may take at most ``max_length - min(prompt, max_length //
  2)`` tokens: a completion longer than that loses its end (and its end-of-turn token), never its
  first tokens. The prompt is then cut from the left: its oldest tokens (the system turn,
  earlier turns, the start of the last user turn) go first; its end, the last user words and the
  assistant header the answer follows, stays.
* **Closed answer set** (:attr:`ChatTask.answers`): every example reserves the longest answer's
  length, in training and scoring alike, so that each answer fits after the same prompt.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from medusa_fed.errors import ConfigError
from medusa_fed.training.dialogues import Dialogue
from medusa_fed.training.instruct import Prompter, answer_ids, pad_examples, render_messages


@dataclass(frozen=True)
class ChatTask:
    """How a causal LM sees a team's instruction file.

    answers : tuple[str, ...] (default: ())
        The closed answer set (scored by rank classification as well); () for free-form answers.
    """

    answers: tuple[str, ...] = ()


# how a causal LM sees a task: a labelled task's label words, or a team's instruction file
Framing = Prompter | ChatTask


def plain_prompt(dialogue: Dialogue) -> str:
    """The prompt for a tokenizer without a chat template."""
    lines = [f"{role.capitalize()}: {content}" for role, content in dialogue.prompt]
    return "\n".join(lines) + "\nAssistant:"


@functools.lru_cache(maxsize=64)
def choice_ids(tokenizer: object, task: ChatTask, max_length: int) -> tuple[tuple[int, ...], ...]:
    """Each closed-set answer's tokens (end of turn included); ConfigError when the longest
    takes more than half of ``max_length`` (the prompt keeps the other half)."""
    choices = tuple(tuple(answer_ids(tokenizer, a)) for a in task.answers)
    longest = max((len(c) for c in choices), default=0)
    if longest > max_length // 2:
        raise ConfigError(
            f"max-length {max_length}: expected the longest of the {len(choices)} answers to "
            f"take at most half of it ({max_length // 2} tokens), found {longest}; raise "
            "max-length"
        )
    return choices


def fit(
    prompt: list[int], answer: list[int], max_length: int, reserve: int = 0
) -> tuple[list[int], list[int]]:
    """``prompt`` and ``answer`` cut to fit ``max_length`` together (module docstring): the
    answer side takes ``max(len(answer), reserve)`` tokens if it can."""
    room = max_length - min(len(prompt), max_length // 2)
    side = min(max(len(answer), reserve), room)
    return prompt[max(0, len(prompt) - (max_length - side)) :], answer[:side]


def chat_example(
    tokenizer: object, dialogue: Dialogue, max_length: int, task: ChatTask
) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids) of one example, fitted to ``max_length``."""
    prompt = render_messages(tokenizer, dialogue.messages(), plain_prompt(dialogue))
    answer = answer_ids(tokenizer, dialogue.completion)
    choices = choice_ids(tokenizer, task, max_length)
    return fit(prompt, answer, max_length, max((len(c) for c in choices), default=0))


def encode_dialogues(
    tokenizer: object, dialogues: Sequence[Dialogue], max_length: int, task: ChatTask
) -> dict[str, torch.Tensor]:
    """A right-padded training batch: label -100 on every prompt token (and padding), the
    answer's ids on the answer and its end-of-turn token."""
    return pad_examples(
        tokenizer, [chat_example(tokenizer, d, max_length, task) for d in dialogues]
    )


_ARTICLES = re.compile(r"\b(a|an|the)\b")


def _words(text: str) -> list[str]:
    """SQuAD's answer normalization: case-folded, punctuation removed, English articles
    removed, split on whitespace (Unicode NFC first)."""
    text = unicodedata.normalize("NFC", text).casefold()
    text = "".join(c for c in text if not unicodedata.category(c).startswith("P"))
    return _ARTICLES.sub(" ", text).split()


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD-style token F1 of ``prediction`` against ``reference``: the harmonic mean of the
    precision and recall of their shared words (a bag of words, :func:`_words`); 1.0 when
    both are empty, 0.0 when only one is."""
    pred, gold = _words(prediction), _words(reference)
    if not pred or not gold:
        return float(pred == gold)
    shared = sum((Counter(pred) & Counter(gold)).values())
    if shared == 0:
        return 0.0
    precision, recall = shared / len(pred), shared / len(gold)
    return 2 * precision * recall / (precision + recall)
