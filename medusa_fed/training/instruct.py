"""A labelled task as an instruction task for a causal LM: prompts, answers, scoring.

A classification example becomes one chat turn: the user message is the task's instruction,
the text, and the answer words; the assistant's answer is the label word followed by the
end-of-turn token. The model's own chat template renders the prompt (a tokenizer without one
gets a plain ``instruction / text / Answer:`` layout). Training puts loss on the answer tokens
only (:func:`encode_instruction`).

Scoring (:func:`score_and_generate`) runs each prompt once, left-padded, and keeps its KV
cache; from it

* **rank classification** (T0-style): each answer's log-likelihood, the sum of its tokens'
  log-probabilities including the end-of-turn token, given the prompt; the prediction is the
  answer with the highest sum;
* **greedy generation**: tokens are taken by argmax until the end-of-turn token or a length
  limit; exact match compares the generated text with the gold answer (Unicode NFC, stripped,
  case-folded).

The text is truncated (in tokens) so that prompt + longest answer fit ``max_length``; the
instruction and the answer words are never cut.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from medusa_fed.errors import ConfigError

GENERIC_INSTRUCTION = "Classify the text."


@dataclass(frozen=True)
class Prompter:
    """How a causal LM sees one labelled task.

    instruction : str
        The task's question (a bundled task's own, or :data:`GENERIC_INSTRUCTION`).
    answers : tuple[str, ...]
        The label words, in label-id order.
    """

    instruction: str
    answers: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.answers) < 2 or any(not a.strip() for a in self.answers):
            raise ConfigError(f"answers: expected >= 2 non-empty label words, found {self.answers}")

    def user_message(self, text: str) -> str:
        options = ", ".join(self.answers)
        return f"{self.instruction}\n\nText: {text}\n\nAnswer with one word: {options}."


def _token_ids(tokenizer: object, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])  # type: ignore[operator]


def _end_id(tokenizer: object) -> int:
    end = getattr(tokenizer, "eos_token_id", None)
    if end is None:
        raise ConfigError("the tokenizer has no end-of-sequence token; answers cannot be ended")
    return int(end)


def render_messages(tokenizer: object, messages: list[dict[str, str]], plain: str) -> list[int]:
    """Token ids of a chat prompt: ``messages`` through the model's chat template with the
    assistant's generation prompt added; a tokenizer without a template gets ``plain``."""
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(  # type: ignore[attr-defined]
            messages, add_generation_prompt=True, tokenize=True
        )
        if hasattr(ids, "keys"):  # transformers may hand back a BatchEncoding
            ids = ids["input_ids"]
        return [int(i) for i in ids]
    return _token_ids(tokenizer, plain)


def _render(tokenizer: object, message: str) -> list[int]:
    return render_messages(tokenizer, [{"role": "user", "content": message}], f"{message}\nAnswer:")


def answer_ids(tokenizer: object, answer: str) -> list[int]:
    """The tokens the model should produce for ``answer``: the word, then end of turn."""
    lead = "" if getattr(tokenizer, "chat_template", None) else " "
    return _token_ids(tokenizer, lead + answer) + [_end_id(tokenizer)]


@functools.lru_cache(maxsize=64)
def _text_budget(tokenizer: object, prompter: Prompter, max_length: int) -> tuple[int, int]:
    """(tokens left for the text, tokens of the longest answer): the same for every example of
    a task, so worked out once per tokenizer, task and max-length."""
    longest = max(len(answer_ids(tokenizer, a)) for a in prompter.answers)
    frame = len(_render(tokenizer, prompter.user_message("")))
    budget = max_length - frame - longest
    if budget < 1:
        raise ConfigError(
            f"max-length {max_length}: expected room for the prompt frame ({frame} tokens), "
            f"the longest answer ({longest}) and some text; raise --max-length"
        )
    return budget, longest


def prompt_ids(tokenizer: object, prompter: Prompter, text: str, max_length: int) -> list[int]:
    """The chat prompt for ``text``, the text cut (in tokens) so that prompt plus the longest
    answer fit ``max_length``."""
    budget, longest = _text_budget(tokenizer, prompter, max_length)
    words = _token_ids(tokenizer, text)
    if len(words) > budget:
        text = tokenizer.decode(words[:budget])  # type: ignore[attr-defined]
    ids = _render(tokenizer, prompter.user_message(text))
    return ids[: max_length - longest]


def encode_instruction(
    tokenizer: object,
    prompter: Prompter,
    texts: Sequence[str],
    label_ids: Sequence[int],
    max_length: int,
) -> dict[str, torch.Tensor]:
    """A right-padded training batch: prompt tokens carry label -100, answer tokens their ids."""
    examples = [
        (
            prompt_ids(tokenizer, prompter, text, max_length),
            answer_ids(tokenizer, prompter.answers[label]),
        )
        for text, label in zip(texts, label_ids, strict=True)
    ]
    return pad_examples(tokenizer, examples)


def pad_examples(
    tokenizer: object, examples: Sequence[tuple[list[int], list[int]]]
) -> dict[str, torch.Tensor]:
    """(prompt ids, answer ids) pairs as one right-padded batch whose labels are -100 on the
    prompt and on padding, the answer's ids on the answer (the loss falls on the answer only)."""
    pad = getattr(tokenizer, "pad_token_id", None)
    pad = _end_id(tokenizer) if pad is None else int(pad)
    rows = [prompt + answer for prompt, answer in examples]
    targets = [[-100] * len(prompt) + answer for prompt, answer in examples]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (row, target) in enumerate(zip(rows, targets, strict=True)):
        ids[i, : len(row)] = torch.tensor(row)
        labels[i, : len(row)] = torch.tensor(target)
        mask[i, : len(row)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _left_pad(prompts: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(list(p))
        mask[i, width - len(p) :] = 1
    return ids, mask


def _continue(
    module: nn.Module,
    cache: object,
    mask: torch.Tensor,
    last_pos: torch.Tensor,
    tokens: torch.Tensor,
) -> tuple[torch.Tensor, object, torch.Tensor]:
    """Feed ``tokens`` [B, T] after the cached prefix; (logits [B, T, V], cache, mask)."""
    steps = tokens.shape[1]
    mask = torch.cat([mask, torch.ones_like(tokens)], dim=1)
    positions = last_pos[:, None] + torch.arange(1, steps + 1)[None, :]
    out = module(
        input_ids=tokens,
        attention_mask=mask,
        position_ids=positions,
        cache=cache,
        use_cache=True,
    )
    return out.logits.float(), out.cache, mask


@torch.no_grad()
def score_and_generate(
    module: nn.Module,
    tokenizer: object,
    prompts: Sequence[Sequence[int]],
    choices: Sequence[Sequence[int]],
    max_new_tokens: int,
) -> tuple[torch.Tensor, list[list[int]]]:
    """Log-likelihood of each choice after each prompt ([B, C], sum over the choice's tokens)
    and each prompt's greedy continuation (token ids, up to and excluding end of turn), from
    one pass over the prompts."""
    end = _end_id(tokenizer)
    pad = getattr(tokenizer, "pad_token_id", None)
    ids, mask = _left_pad(prompts, end if pad is None else int(pad))
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = module(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
    first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)  # [B, V]
    cache, last_pos = out.cache, positions[:, -1]
    batch = ids.shape[0]
    scores = torch.empty((batch, len(choices)))
    for j, choice in enumerate(choices):
        total = first[:, choice[0]].clone()
        if len(choice) > 1:
            follow = torch.tensor(list(choice), dtype=torch.long)[None, :].expand(batch, -1)
            logits, _, _ = _continue(module, copy.deepcopy(cache), mask, last_pos, follow[:, :-1])
            logp = torch.log_softmax(logits, dim=-1)
            total += logp.gather(-1, follow[:, 1:, None]).squeeze(-1).sum(-1)
        scores[:, j] = total
    generated: list[list[int]] = [[] for _ in range(batch)]
    token = first.argmax(-1)
    done = torch.zeros(batch, dtype=torch.bool)
    for step in range(max_new_tokens):
        done |= token == end
        for i in range(batch):
            if not done[i]:
                generated[i].append(int(token[i]))
        if bool(done.all()) or step + 1 == max_new_tokens:
            break
        logits, cache, mask = _continue(module, cache, mask, last_pos, token[:, None])
        last_pos = last_pos + 1
        token = logits[:, -1].argmax(-1)
    return scores, generated
