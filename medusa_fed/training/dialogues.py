"""A team's own instruction data: a JSONL file of chat ``messages`` or ``prompt`` / ``completion``.

Two row formats, one JSON object per line (blank lines skipped), the OpenAI / TRL conversational
layouts:

* ``messages``: ``{"messages": [{"role": "system" | "user" | "assistant", "content": "..."},
  ...]}``; the last turn must be the assistant's: it is the completion, every turn before it the
  prompt (a system turn only first; at least one user turn);
* ``prompt-completion``: ``{"prompt": "...", "completion": "..."}``; the prompt is one user
  turn, the completion the assistant's answer.

Other keys of a row or of a turn are ignored. Every row is checked once, when the file is read:
a row that breaks the format is a :class:`~medusa_fed.errors.DataError` naming the file, the
line, what was expected and what was found; nothing of the file is loaded then.

With ``data-format = "auto"`` (the default) the first row decides: a row holding every column
the team named (``text-columns``, ``label-column``) is a table row; otherwise a ``messages`` key
makes the file ``messages``, a ``prompt`` or ``completion`` key ``prompt-completion``.
"""

from __future__ import annotations

import json
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from medusa_fed.errors import DataError
from medusa_fed.training.splits import split_sizes

DataFormat = Literal["auto", "table", "messages", "prompt-completion"]
DATA_FORMATS: tuple[str, ...] = ("auto", "table", "messages", "prompt-completion")
ROLES = ("system", "user", "assistant")
# the longest content a turn may carry (as for a table's text: a 50 MB turn is not an example)
MAX_CONTENT_CHARS = 100_000
# a file's completions are a closed answer set (scored by rank classification too) when they take
# 2 to this many distinct values, each often enough for a stratified split
MAX_ANSWER_CHOICES = 20

Turn = tuple[str, str]  # (role, content)


@dataclass(frozen=True)
class Dialogue:
    """One instruction example: the turns before the answer, and the answer.

    prompt : tuple[tuple[str, str], ...]
        (role, content) turns, ending with a user turn or a system turn before one.
    completion : str
        The assistant's final turn, surrounding whitespace stripped (non-empty).
    """

    prompt: tuple[Turn, ...]
    completion: str

    def messages(self) -> list[dict[str, str]]:
        """The prompt turns as chat-template messages."""
        return [{"role": role, "content": content} for role, content in self.prompt]

    def key(self) -> str:
        """The prompt as one string: what makes two rows the same question."""
        return json.dumps(self.prompt, ensure_ascii=False)

    def flat(self) -> str:
        """Prompt and completion as plain text (lengths, logs)."""
        return "\n".join([c for _, c in self.prompt] + [self.completion])


def chat_format(path: Path, wanted: DataFormat, table_columns: Sequence[str]) -> DataFormat:
    """The format of ``path``: ``wanted`` unless it is ``auto``; then ``table`` for any file
    but a .jsonl, and for a .jsonl its first row decides (see the module docstring)."""
    if wanted != "auto":
        return wanted
    if path.suffix.lower() != ".jsonl" or not path.is_file():
        return "table"
    with open(path, "rb") as f:  # the first non-blank line only; the readers check the encoding
        line = next((x for x in f if x.strip()), b"")
    if line:
        try:
            first = json.loads(line.decode("utf-8-sig", errors="replace"))
        except json.JSONDecodeError:
            return "table"  # the table reader names the line and the JSON error
        if not isinstance(first, dict) or all(c in first for c in table_columns):
            return "table"
        if "messages" in first:
            return "messages"
        if "prompt" in first or "completion" in first:
            return "prompt-completion"
    return "table"


def read_dialogues(path: Path, fmt: Literal["messages", "prompt-completion"]) -> list[Dialogue]:
    """Every row of the JSONL file ``path`` as a :class:`Dialogue`, in file order; DataError on
    the first row that breaks ``fmt`` (or an empty file, or one that is not UTF-8 JSONL)."""
    if path.suffix.lower() != ".jsonl":
        raise DataError(
            f"data file {path}: data-format {fmt!r} expects a .jsonl file (one JSON object per "
            f"line), found {path.suffix or 'no extension'!r}"
        )
    if not path.is_file():
        found = "a folder" if path.is_dir() else "nothing"
        raise DataError(f"data file not found: tried {path}, found {found} there")
    rows: list[Dialogue] = []
    for number, line in enumerate(_lines(path), start=1):
        if not line.strip():
            continue
        where = f"data file {path}: line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(
                f"{where} is not valid JSON ({err.msg}); expected one JSON object per line"
            ) from err
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected a JSON object, found {_kind(record)}")
        if fmt == "messages":
            rows.append(_from_messages(record, where))
        else:
            rows.append(_from_prompt_completion(record, where))
    if not rows:
        raise DataError(
            f"data file {path}: expected {fmt} rows (one JSON object per line), found an empty "
            "file; nothing to train on"
        )
    return rows


def _lines(path: Path) -> list[str]:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(
            f"data file {path}: expected UTF-8 JSON lines, found a byte that is not UTF-8 at "
            f"offset {err.start}; save the file as UTF-8"
        ) from err
    return text.split("\n")


def _kind(value: object) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    return names.get(type(value), f"a number ({value!r})" if isinstance(value, int | float) else "")


def _text(value: object, what: str, where: str) -> str:
    if not isinstance(value, str):
        raise DataError(f"{where}: {what}: expected a string, found {_kind(value)}")
    if len(value) > MAX_CONTENT_CHARS:
        raise DataError(
            f"{where}: {what}: expected at most {MAX_CONTENT_CHARS:,} characters, found "
            f"{len(value):,}; split or shorten it"
        )
    return unicodedata.normalize("NFC", value)


def _answer(value: object, what: str, where: str) -> str:
    answer = _text(value, what, where).strip()
    if not answer:
        raise DataError(f"{where}: {what}: expected a non-empty answer, found an empty string")
    return answer


def _from_prompt_completion(record: dict[str, object], where: str) -> Dialogue:
    missing = [k for k in ("prompt", "completion") if k not in record]
    if missing:
        raise DataError(
            f"{where}: expected the keys 'prompt' and 'completion', found "
            f"{sorted(record) or 'no keys'}; missing {', '.join(map(repr, missing))}"
        )
    prompt = _text(record["prompt"], "'prompt'", where)
    if not prompt.strip():
        raise DataError(f"{where}: 'prompt': expected a non-empty question, found an empty string")
    return Dialogue((("user", prompt),), _answer(record["completion"], "'completion'", where))


def _from_messages(record: dict[str, object], where: str) -> Dialogue:
    if "messages" not in record:
        raise DataError(
            f"{where}: expected a 'messages' key (a list of role/content turns), found "
            f"{sorted(record) or 'no keys'}"
        )
    turns = record["messages"]
    if not isinstance(turns, list) or not turns:
        found = "an empty list" if turns == [] else _kind(turns)
        raise DataError(f"{where}: 'messages': expected a non-empty list of turns, found {found}")
    parsed: list[Turn] = []
    for i, turn in enumerate(turns, start=1):
        what = f"turn {i}"
        if not isinstance(turn, dict):
            raise DataError(f"{where}: {what}: expected an object, found {_kind(turn)}")
        missing = [k for k in ("role", "content") if k not in turn]
        if missing:
            raise DataError(
                f"{where}: {what}: expected the keys 'role' and 'content', found "
                f"{sorted(turn) or 'no keys'}; missing {', '.join(map(repr, missing))}"
            )
        role = turn["role"]
        if role not in ROLES:
            raise DataError(
                f"{where}: {what}: expected a role in {', '.join(ROLES)}, found {role!r}"
            )
        if role == "system" and i > 1:
            raise DataError(f"{where}: {what}: expected a system turn only first, found it later")
        parsed.append((str(role), _text(turn["content"], f"{what} 'content'", where)))
    last_role = parsed[-1][0]
    if last_role != "assistant":
        raise DataError(
            f"{where}: expected the last turn to be the assistant's answer, found a {last_role} "
            f"turn last ({len(parsed)} turns)"
        )
    prompt = tuple(parsed[:-1])
    if not any(role == "user" for role, _ in prompt):
        raise DataError(
            f"{where}: expected a user turn before the assistant's answer, found "
            f"{[r for r, _ in parsed]}"
        )
    completion = _answer(parsed[-1][1], f"turn {len(parsed)} 'content'", where)
    return Dialogue(prompt, completion)


def normalize_answer(text: str) -> str:
    """The form answers are compared in: Unicode NFC, surrounding space and punctuation
    stripped, case-folded."""
    return unicodedata.normalize("NFC", text).strip().strip(".!?,;:\"'").strip().casefold()


def closed_answer_set(
    rows: list[Dialogue], fractions: tuple[float, float]
) -> tuple[tuple[str, ...], list[int]]:
    """The answer set and each row's answer id when the completions form a closed set: 2 to
    :data:`MAX_ANSWER_CHOICES` distinct answers (compared as :func:`normalize_answer` does),
    each often enough for a stratified split to give it a train, validation and test example.
    Answers are the first spelling seen of each, sorted; ``((), [])`` for free-form answers."""
    spelling: dict[str, str] = {}
    for d in rows:
        spelling.setdefault(normalize_answer(d.completion), d.completion)
    counts = Counter(normalize_answer(d.completion) for d in rows)
    closed = 2 <= len(counts) <= MAX_ANSWER_CHOICES and all(
        split_sizes(n, fractions)[0] >= 1 for n in counts.values()
    )
    if not closed:
        return (), []
    order = sorted(spelling, key=lambda k: spelling[k])
    answers = tuple(spelling[k] for k in order)
    index = {k: i for i, k in enumerate(order)}
    return answers, [index[normalize_answer(d.completion)] for d in rows]
