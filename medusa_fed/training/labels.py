"""Labels and duplicates of a team's rows: the label set found, label ids, unique texts.

Pure functions on lists of strings (``where`` names the data in messages and log lines).
"""

from __future__ import annotations

import logging
import unicodedata
from collections import defaultdict

from medusa_fed.errors import DataError

logger = logging.getLogger(__name__)


def _label_key(label: str) -> str:
    """What two labels share when a person would read them as one: compatibility forms folded
    (fullwidth letters), invisible format characters (zero-width space) dropped, case folded,
    integers by value (``1`` and ``01``)."""
    text = "".join(
        c for c in unicodedata.normalize("NFKC", label) if unicodedata.category(c) != "Cf"
    )
    text = text.strip().casefold()
    return str(int(text)) if text.lstrip("-").isdigit() else text


def warn_lookalike_labels(labels: set[str], where: str) -> None:
    """Warn when distinct labels differ only by case, width, invisible characters or leading
    zeros: they become separate classes, which is rarely what the data meant."""
    groups: dict[str, list[str]] = defaultdict(list)
    for label in sorted(labels):
        groups[_label_key(label)].append(label)
    for same in (g for g in groups.values() if len(g) > 1):
        logger.warning(
            "load_task: %s: labels %s differ only by case, width, invisible characters or "
            "leading zeros; they are kept as %d separate classes",
            where, ", ".join(repr(x) for x in same), len(same),
        )  # fmt: skip


def infer_labels(raw: list[str], where: str) -> tuple[str, ...]:
    found = set(raw)
    warn_lookalike_labels(found, where)
    if len(found) < 2:
        raise DataError(
            f"{where}: expected at least 2 distinct labels for classification, found "
            f"{sorted(found)!r}; check label_column, or use kind='language-modeling'"
        )
    if all(x.lstrip("-").isdigit() for x in found):
        return tuple(sorted(found, key=int))
    return tuple(sorted(found))


def label_ids(raw: list[str], numbers: list[int], labels: tuple[str, ...], where: str) -> list[int]:
    index = {lab: i for i, lab in enumerate(labels)}
    unknown: dict[str, list[int]] = defaultdict(list)
    for lab, number in zip(raw, numbers, strict=True):
        if lab not in index:
            unknown[lab].append(number)
    if unknown:
        total = sum(len(v) for v in unknown.values())
        shown = "; ".join(
            f"{lab!r} (row{'s' if len(rows) > 1 else ''} "
            f"{', '.join(map(str, rows[:3]))}{', ...' if len(rows) > 3 else ''})"
            for lab, rows in list(unknown.items())[:5]
        )
        raise DataError(
            f"{where}: expected labels in {labels!r}, found {total} rows with other labels "
            f"({len(unknown)} distinct): {shown}; rows are counted from 1 without the header. "
            "Fix the data or the expected label set; the task is not loaded"
        )
    return [index[lab] for lab in raw]


def unique_rows(texts: list[str], pairs: list[str], ids: list[int], where: str) -> list[int]:
    """Positions to keep: first occurrence of each (text, pair); none of a conflicting one."""
    first: dict[tuple[str, str], int] = {}
    conflicting: set[tuple[str, str]] = set()
    for i, key in enumerate(zip(texts, pairs, strict=True)):
        j = first.setdefault(key, i)
        if ids and ids[j] != ids[i]:
            conflicting.add(key)
    keep = [i for i in sorted(first.values()) if (texts[i], pairs[i]) not in conflicting]
    if len(keep) < len(texts):
        logger.info(
            "load_task: %s: dropped %d duplicate rows (%d texts had conflicting labels)",
            where, len(texts) - len(keep), len(conflicting),
        )  # fmt: skip
    return keep
