"""A team's private data: where it is (:class:`TaskSpec`), and its seeded split (:class:`TaskData`).

``load_task(spec)`` reads a bundled task (``"movie"``, ``"tweet"``, ``"spam"``, ``"bbc"``, see
:mod:`medusa_fed.training.tasks`) or a ``.csv`` / ``.tsv`` / ``.jsonl`` / ``.parquet`` file, cleans
it and splits it (a .jsonl file of chat ``messages`` or ``prompt`` / ``completion`` rows is an
instruction task instead: :mod:`medusa_fed.training.dialogues`, split the same way):

1. read rows; check the columns exist;
2. texts: whitespace stripped, otherwise raw; several text columns are joined with ``separator``
   (empty parts skipped), or, with ``pair=True``, two columns become (text, text_pair);
   rows with an empty text or an empty label are dropped (warning with the count);
3. labels: stripped strings; with a known label set (``labels`` or a bundled task's classes) any
   other value is an error; otherwise the set found, sorted (numerically if all are integers);
4. duplicates (same text and pair) are dropped, first occurrence kept, so no text sits in two
   splits; a text seen with different labels is dropped entirely (``deduplicate=False`` keeps all);
5. split, per class for classification (stratified), over all rows for language modeling; every
   split gets at least one example of every class; ``max_*`` caps then take a stratified
   subsample of each split, so a cap never changes which examples the other splits hold.

Randomness comes only from ``random.Random(seed).random()``, whose stream Python guarantees
across versions and platforms (``random.shuffle`` is not guaranteed; see :func:`_shuffle`).
"""

from __future__ import annotations

import logging
import random
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from medusa_fed.errors import ConfigError, DataError
from medusa_fed.training.dialogues import (
    DATA_FORMATS,
    DataFormat,
    Dialogue,
    chat_format,
    closed_answer_set,
    normalize_answer,
    read_dialogues,
)
from medusa_fed.training.labels import infer_labels, label_ids, unique_rows
from medusa_fed.training.splits import balanced_cap, plain_split, stratified_cap, stratified_split
from medusa_fed.training.tasks import (
    BUNDLED_TASKS,
    SUPPORTED_SUFFIXES,
    Row,
    read_bundled,
    read_table,
)

logger = logging.getLogger(__name__)

# the longest text a row may carry (a 50 MB row is an accident or an attack, not an example)
MAX_TEXT_CHARS = 100_000

# "instruction": a team's own prompt/completion or chat-messages file (a spec never asks for
# it: the file's format decides, :mod:`medusa_fed.training.dialogues`)
TaskKind = Literal["classification", "language-modeling", "instruction"]
_KINDS = ("classification", "language-modeling")


@dataclass(frozen=True)
class TaskSpec:
    """Where a team's data is and how to split it; validated on construction (ConfigError).

    source : str
        A bundled task name (``movie``, ``tweet``, ``spam``, ``bbc``) or a path to a
        .csv/.tsv/.jsonl/.parquet file.
    text_columns : tuple[str, ...] (default: ("text",))
        Text column(s); several are joined with ``separator`` unless ``pair``.
    label_column : str | None (default: "label")
        Label column; ignored for language modeling; None requires ``kind="language-modeling"``.
    kind : "classification" | "language-modeling" (default: "classification")
    max_train, max_validation, max_test : int | None (default: None)
        Caps on split sizes (stratified subsample); None keeps the whole split.
    balance_classes : bool (default: False)
        The caps take every class equally, as far as its examples go (:func:`balanced_cap`),
        instead of in proportion: small subsets of a skewed task then measure the task, not the
        majority class.
    validation_fraction : float (default: 0.1)
    test_fraction : float (default: 0.2)
        Shares of each class (of all rows for language modeling), each in (0, 1), sum below 1.
    seed : int (default: 0)
    labels : tuple[str, ...] | None (default: None)
        Expected label set, in label-id order; any other label in the data is a DataError.
        None: a bundled task's classes, or the labels found in a file.
    pair : bool (default: False)
        Two text columns become (text, text_pair) for the tokenizer instead of being joined.
    separator : str (default: "\\n")
        Joins several text columns.
    deduplicate : bool (default: True)
        Drop repeated texts so that no text sits in two splits.
    data_format : "auto" | "table" | "messages" | "prompt-completion" (default: "auto")
        How a file's rows read: text and label columns (``table``), or instruction rows of a
        .jsonl file (:mod:`medusa_fed.training.dialogues`); ``auto`` decides from the first row.
    """

    source: str
    text_columns: tuple[str, ...] = ("text",)
    label_column: str | None = "label"
    kind: TaskKind = "classification"
    max_train: int | None = None
    max_validation: int | None = None
    max_test: int | None = None
    balance_classes: bool = False
    validation_fraction: float = 0.1
    test_fraction: float = 0.2
    seed: int = 0
    labels: tuple[str, ...] | None = None
    pair: bool = False
    separator: str = "\n"
    deduplicate: bool = True
    data_format: DataFormat = "auto"

    def __post_init__(self) -> None:
        if isinstance(self.text_columns, str):
            object.__setattr__(self, "text_columns", (self.text_columns,))
        object.__setattr__(self, "text_columns", tuple(self.text_columns))
        if self.labels is not None:
            object.__setattr__(self, "labels", tuple(self.labels))
        if not isinstance(self.source, str) or not self.source.strip():
            raise ConfigError("task source: expected a bundled task name or a file path, found ''")
        cols = self.text_columns
        if (
            not cols
            or any(not isinstance(c, str) or not c for c in cols)
            or len(set(cols)) < len(cols)
        ):
            raise ConfigError(f"text_columns: expected distinct non-empty names, found {cols!r}")
        if self.pair and len(cols) != 2:
            raise ConfigError(f"pair=True: expected exactly 2 text columns, found {cols!r}")
        if self.kind not in _KINDS:
            raise ConfigError(f"kind: expected one of {_KINDS}, found {self.kind!r}")
        if self.kind == "classification" and not self.label_column:
            raise ConfigError(
                f"label_column is {self.label_column!r} but kind is 'classification'; name the "
                "label column, or set kind='language-modeling' for texts without labels"
            )
        if self.kind == "language-modeling" and self.labels is not None:
            raise ConfigError("labels: only classification tasks have labels, found a label set")
        for name in ("max_train", "max_validation", "max_test"):
            cap = getattr(self, name)
            if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
                raise ConfigError(f"{name}: expected None or an integer >= 1, found {cap!r}")
        for name in ("validation_fraction", "test_fraction"):
            frac = getattr(self, name)
            if isinstance(frac, bool) or not isinstance(frac, int | float) or not 0 < frac < 1:
                raise ConfigError(f"{name}: expected a number in (0, 1), found {frac!r}")
        if self.validation_fraction + self.test_fraction >= 1:
            raise ConfigError(
                f"validation_fraction + test_fraction = "
                f"{self.validation_fraction + self.test_fraction:g}: expected below 1, "
                "so that training keeps some data"
            )
        if self.data_format not in DATA_FORMATS:
            formats = ", ".join(DATA_FORMATS)
            raise ConfigError(f"data-format: expected one of {formats}, found {self.data_format!r}")
        chat = self.data_format in ("messages", "prompt-completion")
        if chat and self.source.strip() in BUNDLED_TASKS:
            raise ConfigError(
                f"data-format {self.data_format!r} reads a team's .jsonl file, found the bundled "
                f"task {self.source!r}; set data-format to auto or table"
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"seed: expected an integer, found {self.seed!r}")
        if self.labels is not None:
            labs = self.labels
            if (
                len(labs) < 2
                or len(set(labs)) < len(labs)
                or any(not isinstance(x, str) or not x.strip() for x in labs)
            ):
                raise ConfigError(f"labels: expected >= 2 distinct non-empty names, found {labs!r}")


@dataclass(frozen=True)
class Split:
    """One split. ``label_ids[i]`` indexes ``TaskData.labels``; empty for language modeling.

    ``text_pairs`` holds the second text of each example when the spec has ``pair=True``. An
    instruction task's split holds its examples in ``dialogues`` (``texts`` their plain text,
    ``label_ids`` indexing ``TaskData.answers`` when the answers form a closed set).
    """

    texts: tuple[str, ...]
    label_ids: tuple[int, ...]
    text_pairs: tuple[str, ...] = ()
    dialogues: tuple[Dialogue, ...] = ()

    def __len__(self) -> int:
        return len(self.texts)


@dataclass(frozen=True)
class TaskData:
    """A loaded, split task. ``source`` is "bundled:<name>" or the absolute file path."""

    name: str
    kind: TaskKind
    labels: tuple[str, ...]
    train: Split
    validation: Split
    test: Split
    source: str = ""
    dropped_rows: int = 0
    instruction: str = ""  # the question a causal LM is asked (a bundled task's own, else "")
    answers: tuple[str, ...] = ()  # an instruction task's closed answer set; () = free-form

    def splits(self) -> dict[str, Split]:
        return {"train": self.train, "validation": self.validation, "test": self.test}


def load_task(spec: TaskSpec) -> TaskData:
    """Read, clean and split the data ``spec`` points at; DataError when it cannot be used."""
    path = Path(spec.source).expanduser().resolve()
    if spec.source.strip() not in BUNDLED_TASKS:
        table_columns = list(spec.text_columns)
        if spec.kind == "classification" and spec.label_column:
            table_columns.append(spec.label_column)
        fmt = chat_format(path, spec.data_format, table_columns)
        if fmt == "messages" or fmt == "prompt-completion":
            return _load_dialogues(spec, path, fmt)
    rows, columns, source, name, known = _read_source(spec)
    where = f"bundled task {name!r}" if source.startswith("bundled:") else source
    needed = list(spec.text_columns)
    if spec.kind == "classification" and spec.label_column is not None:
        needed.append(spec.label_column)
    missing = [c for c in needed if c not in columns]
    if missing:
        raise DataError(
            f"{where}: expected column(s) {', '.join(map(repr, missing))}, found columns "
            f"{', '.join(map(repr, columns)) or '(none)'}; set text_columns / label_column "
            "(node config text-columns / label-column) to the right names"
        )
    if not rows:
        raise DataError(f"{where}: expected data rows, found none; the task cannot be loaded")
    texts, pairs, raw_labels, row_numbers, dropped = _clean(rows, spec, where)
    labels: tuple[str, ...] = ()
    ids: list[int] = []
    if spec.kind == "classification":
        labels = spec.labels or known or infer_labels(raw_labels, where)
        ids = label_ids(raw_labels, row_numbers, labels, where)
    if spec.deduplicate:
        keep = unique_rows(texts, pairs, ids, where)
        dropped += len(texts) - len(keep)
        texts, pairs = [texts[i] for i in keep], [pairs[i] for i in keep]
        ids = [ids[i] for i in keep] if ids else []
    made = [
        Split(
            texts=tuple(texts[i] for i in part),
            label_ids=tuple(ids[i] for i in part) if ids else (),
            text_pairs=tuple(pairs[i] for i in part) if spec.pair else (),
        )
        for part in _partition(spec, len(texts), ids, labels, where)
    ]
    train, validation, test = made
    task = BUNDLED_TASKS.get(spec.source.strip())
    instruction = task.instruction if task is not None else ""
    data = TaskData(name, spec.kind, labels, train, validation, test, source, dropped, instruction)
    logger.info(
        "load_task: %s: train %d, validation %d, test %d (%d rows dropped)",
        name, len(data.train), len(data.validation), len(data.test), dropped,
    )  # fmt: skip
    return data


def _load_dialogues(
    spec: TaskSpec, path: Path, fmt: Literal["messages", "prompt-completion"]
) -> TaskData:
    """An instruction task from a team's JSONL file: every row checked, repeated prompts
    dropped (a prompt seen with different answers entirely), then split like any task:
    stratified by answer when the answers form a closed set (:func:`closed_answer_set`), plainly
    otherwise. ``text_columns`` and ``label_column`` do not apply."""
    where = str(path)
    rows = read_dialogues(path, fmt)
    keys = [normalize_answer(d.completion) for d in rows]
    index = {k: i for i, k in enumerate(dict.fromkeys(keys))}
    ids = [index[k] for k in keys]
    dropped = 0
    if spec.deduplicate:
        keep = unique_rows([d.key() for d in rows], [""] * len(rows), ids, where)
        dropped = len(rows) - len(keep)
        rows, ids = [rows[i] for i in keep], [ids[i] for i in keep]
    if not rows:
        raise DataError(f"{where}: every prompt had conflicting answers; nothing left to train on")
    answers, ids = closed_answer_set(rows, (spec.validation_fraction, spec.test_fraction))
    made = [
        Split(
            texts=tuple(rows[i].flat() for i in part),
            label_ids=tuple(ids[i] for i in part) if answers else (),
            dialogues=tuple(rows[i] for i in part),
        )
        for part in _partition(spec, len(rows), ids, answers, where)
    ]
    train, validation, test = made
    data = TaskData(
        path.stem, "instruction", (), train, validation, test, where, dropped, "", answers
    )
    logger.info(
        "load_task: %s (%s, %s): train %d, validation %d, test %d (%d rows dropped)",
        where, fmt, f"{len(answers)} answers" if answers else "free-form answers",
        len(train), len(validation), len(test), dropped,
    )  # fmt: skip
    return data


def _partition(
    spec: TaskSpec, n: int, ids: list[int], labels: tuple[str, ...], where: str
) -> list[list[int]]:
    """(train, validation, test) positions of ``n`` examples: stratified by ``ids`` when there
    are ``labels``, plain otherwise; then each capped by the spec's ``max_*`` (a stratified
    subsample when there are ids, class-balanced with ``balance_classes``)."""
    rng = random.Random(spec.seed)
    fractions = (spec.validation_fraction, spec.test_fraction)
    if labels:
        parts = stratified_split(ids, labels, fractions, rng, where)
    else:
        parts = plain_split(n, fractions, rng, where)
    caps = (spec.max_train, spec.max_validation, spec.max_test)
    take = balanced_cap if spec.balance_classes else stratified_cap
    return [
        part if cap is None else take(part, ids, cap) if labels else part[:cap]
        for part, cap in zip(parts, caps, strict=True)
    ]


def describe(data: TaskData) -> dict[str, object]:
    """JSON-able summary: sizes, label counts, source name. Never any text or label of a row.

    A file source is reported by its file name only: the full path stays on the team's site.
    """
    source = data.source if data.source.startswith("bundled:") else Path(data.source).name
    splits: dict[str, dict[str, object]] = {}
    for key, split in data.splits().items():
        entry: dict[str, object] = {"size": len(split)}
        if data.kind == "classification":
            counts = Counter(split.label_ids)
            entry["label_counts"] = {lab: counts.get(i, 0) for i, lab in enumerate(data.labels)}
        splits[key] = entry
    return {
        "name": data.name,
        "kind": data.kind,
        "source": source,
        "labels": list(data.labels),
        "text_pairs": bool(data.train.text_pairs),
        "dropped_rows": data.dropped_rows,
        "answer_choices": len(data.answers),  # a count only: the answers are the team's data
        "splits": splits,
    }


def _read_source(spec: TaskSpec) -> tuple[list[Row], list[str], str, str, tuple[str, ...]]:
    """rows, columns, source, task name, known label set (a bundled task's classes, else ())."""
    task = BUNDLED_TASKS.get(spec.source.strip())
    if task is not None:
        rows, _ = read_bundled(task)
        return rows, ["text", "label"], f"bundled:{task.name}", task.name, task.classes
    path = Path(spec.source).expanduser().resolve()
    if not path.exists() and path.suffix.lower() not in SUPPORTED_SUFFIXES:
        raise DataError(
            f"task {spec.source!r} is neither a bundled task ({', '.join(BUNDLED_TASKS)}) nor an "
            f"existing data file (tried {path}); name a bundled task or a "
            f"{'/'.join(SUPPORTED_SUFFIXES)} file"
        )
    rows, columns = read_table(path)
    return rows, columns, str(path), path.stem, ()


def _clean(
    rows: list[Row], spec: TaskSpec, where: str
) -> tuple[list[str], list[str], list[str], list[int], int]:
    """Stripped texts, pairs, labels and 1-based row numbers of the usable rows; dropped count."""
    texts: list[str] = []
    pairs: list[str] = []
    labels: list[str] = []
    numbers: list[int] = []
    no_text = no_label = 0
    classify = spec.kind == "classification"
    for number, row in enumerate(rows, start=1):
        parts = [(row.get(c) or "").strip() for c in spec.text_columns]
        longest = max((len(p) for p in parts), default=0)
        if longest > MAX_TEXT_CHARS:
            raise DataError(
                f"{where}: row {number}: expected a text of at most {MAX_TEXT_CHARS:,} "
                f"characters, found {longest:,}; split or shorten it (nothing was loaded)"
            )
        label = (row.get(spec.label_column) or "") if classify and spec.label_column else ""
        label = unicodedata.normalize("NFC", label).strip()
        if spec.pair:
            text, pair = parts
            empty = not text or not pair
        else:
            text, pair = spec.separator.join(p for p in parts if p), ""
            empty = not text
        if empty:
            no_text += 1
        elif classify and not label:
            no_label += 1
        else:
            texts.append(text)
            pairs.append(pair)
            labels.append(label)
            numbers.append(number)
    if not texts:
        raise DataError(
            f"{where}: expected non-empty texts, found {len(rows)} rows with "
            f"{no_text} empty texts and {no_label} empty labels; nothing left to train on"
        )
    if no_text or no_label:
        logger.warning(
            "load_task: %s: dropped %d rows with an empty text and %d with an empty label",
            where, no_text, no_label,
        )  # fmt: skip
    return texts, pairs, labels, numbers, no_text + no_label
