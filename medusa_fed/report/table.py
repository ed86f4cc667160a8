"""The per-team results table: the same cells for the terminal (fixed width) and Markdown.

Columns: team, task, controlled?, owned share, then one metric (scores in percent with one
decimal, loss and perplexity as they are)
before fine-tuning, fine-tuned alone, and merged by each method: accuracy by default, and in the
terminal a second table of exact_match when a team has free-form answers. A left-out team's
name gets a ``*`` and its reason goes in a note under the table. The ``average`` row is the mean
over the teams whose status is ``ok`` and that have a value in that column (``-`` if none).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from medusa_fed.report.schema import (
    STATUS_OK,
    Report,
    alone_label,
    phase_metrics,
    validate_report,
)

MISSING = "-"
# what a results table shows: scores in [0, 1] in percent, losses as they are; counts
# (examples, tokens, steps, seconds) are bookkeeping, not results
PERCENT_METRICS = ("accuracy", "macro_f1", "exact_match", "token_f1")
PLAIN_METRICS = ("loss", "perplexity")
WIDTH = 100  # the terminal table wraps method columns into blocks to stay within this


@dataclass(frozen=True)
class TeamTable:
    """Formatted cells of the team table.

    headers : list[str]
    rows : list[list[str]]
        One per team, then the ``average`` row.
    numeric : list[bool]
        Per column: right-aligned number (True) or left-aligned text.
    notes : list[str]
        Footnotes (why a team was left out).
    """

    headers: list[str]
    rows: list[list[str]]
    numeric: list[bool]
    notes: list[str]


def fmt_percent(value: float | None) -> str:
    """0.8123 -> ``"81.2"``; None -> ``"-"``."""
    return MISSING if value is None else f"{100.0 * value:.1f}"


def fmt_share(value: float | None, digits: int = 1) -> str:
    """0.3333 -> ``"33.3%"`` (``digits`` decimals); None -> ``"-"``."""
    return MISSING if value is None else f"{100.0 * value:.{digits}f}%"


def is_result(metric: str) -> bool:
    """Whether ``metric`` is a score a results table shows (not a count)."""
    return metric in PERCENT_METRICS or metric in PLAIN_METRICS


def metric_title(metric: str) -> str:
    """``accuracy (%)``, ``perplexity``: the metric with its unit."""
    return f"{metric} (%)" if metric in PERCENT_METRICS else metric


def fmt_metric(value: float | None, metric: str) -> str:
    """A table cell: percent with one decimal for scores, two decimals for losses."""
    if metric in PERCENT_METRICS or value is None:
        return fmt_percent(value)
    return f"{value:.2f}"


def _value(metrics: Mapping[str, Any] | None, metric: str) -> float | None:
    if not metrics or metric not in metrics:
        return None
    return float(metrics[metric])


def team_table(report: Report, metric: str = "accuracy") -> TeamTable:
    """The cells of the per-team table for ``metric``.

    Parameters
    ----------
    report : Report
        A report (see :mod:`medusa_fed.report.schema`).
    metric : str (default: "accuracy")
        Which metric fills the before/alone/merged columns.
    """
    methods = list(report["methods"])
    headers = ["team", "task", "ctrl", "owned", "before", alone_label(report), *methods]
    numeric = [False, False, False, True, True, True] + [True] * len(methods)
    rows: list[list[str]] = []
    notes: list[str] = []
    columns: list[list[float]] = [[] for _ in range(2 + len(methods))]
    for team in report["teams"]:
        values = [_value(phase_metrics(team, p), metric) for p in ("before", "alone", *methods)]
        ok = team["status"] == STATUS_OK
        if not ok:
            notes.append(f"* {team['name']}: {team['status']}")
        for column, v in zip(columns, values, strict=True):
            if ok and v is not None:
                column.append(v)
        rows.append(
            [
                team["name"] + ("" if ok else "*"),
                team["task"],
                "yes" if team["controlled"] else "no",
                fmt_share(team.get("owned_share")),
                *(fmt_metric(v, metric) for v in values),
            ]
        )
    means = [math.fsum(c) / len(c) if c else None for c in columns]
    rows.append(["average", "", "", "", *(fmt_metric(v, metric) for v in means)])
    return TeamTable(headers, rows, numeric, notes)


def _fixed_width(
    headers: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[bool]
) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        triples = zip(cells, widths, numeric, strict=True)
        parts = [c.rjust(w) if n else c.ljust(w) for c, w, n in triples]
        return "  ".join(parts).rstrip()

    out = [line(headers), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in rows[:-1]]
    out += ["  ".join("-" * w for w in widths), line(rows[-1])]
    return "\n".join(out)


def headline_metrics(report: Report) -> list[str]:
    """The main column(s) of the terminal report: ``accuracy``, and ``exact_match`` too when a
    team reports it without accuracy (a team's instruction file with free-form answers, for
    which exact match of the generated answer is the main score)."""
    phases = ("before", "alone", *report["methods"])
    free_form = any(
        "exact_match" in metrics and "accuracy" not in metrics
        for team in report["teams"]
        for metrics in (phase_metrics(team, p) or {} for p in phases)
    )
    return ["accuracy", "exact_match"] if free_form else ["accuracy"]


def render_table(report: Mapping[str, Any], metric: str | None = None, width: int = WIDTH) -> str:
    """The terminal table: one row per team plus an ``average`` row (plain fixed-width text).

    Method columns that do not fit in ``width`` characters go to further blocks, each repeating
    the team column.

    Parameters
    ----------
    report : Mapping[str, Any]
        A report dict; validated first (:func:`validate_report`).
    metric : str | None (default: None)
        The metric shown, in percent; None: one table per :func:`headline_metrics`.
    width : int (default: 100)
        Target line width.
    """
    checked = validate_report(report)
    names = [metric] if metric else headline_metrics(checked)
    return "\n\n".join(_render_one(checked, name, width) for name in names)


def _render_one(report: Report, metric: str, width: int) -> str:
    table = team_table(report, metric)
    fixed = 6  # team, task, ctrl, owned, before, alone
    col_w = [max(len(h), *(len(r[i]) for r in table.rows)) + 2 for i, h in enumerate(table.headers)]
    blocks: list[list[int]] = [list(range(fixed))]
    used = sum(col_w[:fixed])
    for i in range(fixed, len(table.headers)):
        if used + col_w[i] > width and len(blocks[-1]) > (fixed if len(blocks) == 1 else 1):
            blocks.append([0])
            used = col_w[0]
        blocks[-1].append(i)
        used += col_w[i]
    title = (
        f"{metric_title(metric)} per team: before fine-tuning, {alone_label(report, long=True)}, "
        "merged by each method"
    )
    parts = [title]
    for cols in blocks:
        parts.append(
            _fixed_width(
                [table.headers[i] for i in cols],
                [[r[i] for i in cols] for r in table.rows],
                [table.numeric[i] for i in cols],
            )
        )
    text = "\n\n".join(parts)
    return text + "".join("\n" + note for note in table.notes)


def markdown_table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[bool]
) -> str:
    """A GitHub-flavoured Markdown table (numbers right-aligned); ``|`` in cells is escaped."""

    def cells(values: Sequence[str]) -> str:
        return "| " + " | ".join(v.replace("|", "\\|") for v in values) + " |"

    align = ["---:" if n else ":---" for n in numeric]
    return "\n".join([cells(headers), "| " + " | ".join(align) + " |", *(cells(r) for r in rows)])
