"""report.md: the terminal table's numbers in Markdown, plus ownership, conflicts, bytes, timings,
rejections, and the plots embedded as images."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from medusa_fed.report.schema import Report, alone_label, phase_metrics
from medusa_fed.report.table import (
    fmt_share,
    is_result,
    markdown_table,
    metric_title,
    team_table,
)

NOT_RECORDED = "_Not recorded in this run._"


def fmt_bytes(n: int) -> str:
    """1536 -> ``"1.5 KiB"``; 12 -> ``"12 B"``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _ratio(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.2f}%" if whole else "-"


def _scalar(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def metric_names(report: Report) -> list[str]:
    """Result metrics any team reports (not counts such as ``examples``), ``accuracy`` first,
    the rest sorted."""
    names: set[str] = set()
    for team in report["teams"]:
        for phase in ("before", "alone", *report["methods"]):
            names |= {n for n in phase_metrics(team, phase) or {} if is_result(n)}
    return sorted(names, key=lambda n: (n != "accuracy", n))


def _image(plots: Mapping[str, str], name: str, alt: str) -> list[str]:
    return [f"![{alt}]({plots[name]})", ""] if name in plots else []


def _results(report: Report, plots: Mapping[str, str]) -> list[str]:
    out = ["## Results", ""]
    for metric in metric_names(report) or ["accuracy"]:
        table = team_table(report, metric)
        out += [
            f"{metric_title(metric)}: before fine-tuning, {alone_label(report, long=True)}, "
            "merged by each method.",
            "",
        ]
        out += [markdown_table(table.headers, table.rows, table.numeric), ""]
        out += [note.replace("* ", "\\* ", 1) + "  " for note in table.notes]
        out += [""] if table.notes else []
    return out + _image(plots, "accuracy_per_team", "accuracy per team and method")


def _ownership(report: Report, plots: Mapping[str, str]) -> list[str]:
    shares = report.get("ownership", {}).get("teams", {})
    out = ["## Ownership", ""]
    if shares:
        rows = [[team, fmt_share(s)] for team, s in shares.items()]
        rows.append(["unowned", fmt_share(max(0.0, 1.0 - sum(shares.values())))])
        out += [markdown_table(["team", "owned"], rows, [False, True]), ""]
    else:
        out += [NOT_RECORDED, ""]
    return out + _image(plots, "ownership_per_layer", "ownership share per layer")


def _conflicts(report: Report, plots: Mapping[str, str]) -> list[str]:
    conflicts = report.get("conflicts", {})
    out = ["## Conflicts", ""]
    if conflicts:
        rows = [
            [m, f"{c['elements_touched_by_2plus']:,}", fmt_share(c["share"], digits=3)]
            for m, c in conflicts.items()
        ]
        headers = ["method", "elements touched by 2+ branches", "share"]
        out += [markdown_table(headers, rows, [False, True, True]), ""]
    else:
        out += [NOT_RECORDED, ""]
    return out + _image(plots, "conflicts_per_method", "conflicts per method")


def _bytes(report: Report, plots: Mapping[str, str]) -> list[str]:
    out = ["## Bytes on the wire", ""]
    rows = []
    for team, stages in report.get("bytes", {}).items():
        for stage, b in stages.items():
            sent, received, dense = b.get("sent", 0), b.get("received", 0), b.get("dense_fp32", 0)
            rows.append(
                [team, stage, fmt_bytes(sent), fmt_bytes(received), fmt_bytes(dense)]
                + [_ratio(sent, dense), _ratio(received, dense)]
            )
    if rows:
        headers = ["team", "stage", "sent", "received", "dense fp32", "sent/dense", "recv/dense"]
        out += [markdown_table(headers, rows, [False, False] + [True] * 5), ""]
    else:
        out += [NOT_RECORDED, ""]
    return out + _image(plots, "bytes_per_stage", "bytes per team and stage")


def _timings(report: Report) -> list[str]:
    timings = report.get("timings_s", {})
    if not timings:
        return ["## Timings", "", NOT_RECORDED, ""]
    rows = [[stage, f"{s:.1f}"] for stage, s in timings.items()]
    rows.append(["total", f"{sum(timings.values()):.1f}"])
    return ["## Timings", "", markdown_table(["stage", "seconds"], rows, [False, True]), ""]


def _rejections(report: Report) -> list[str]:
    records = report.get("rejections", [])
    if not records:
        return ["## Rejected payloads", "", "None.", ""]
    rows = [[str(r.get(k, "")) for k in ("team", "stage", "reason", "at")] for r in records]
    headers = ["team", "stage", "reason", "at"]
    return ["## Rejected payloads", "", markdown_table(headers, rows, [False] * 4), ""]


def render_markdown(report: Report, plots: Mapping[str, str] | None = None) -> str:
    """report.md for a validated ``report``; ``plots`` maps plot name -> relative image path."""
    plots = plots or {}
    out = ["# Medusa run report", ""]
    base = report.get("base", {})
    if base:
        source, fingerprint = base.get("source", "?"), base.get("fingerprint", "?")
        out += [f"Base model: `{source}` (fingerprint `{fingerprint}`).", ""]
    out += [f"Merge methods: {', '.join(report['methods']) or 'none'}.", ""]
    out += _results(report, plots)
    out += _ownership(report, plots) + _conflicts(report, plots) + _bytes(report, plots)
    out += _timings(report) + _rejections(report)
    run = report.get("run", {})
    out += ["## Run configuration", ""]
    if run:
        rows = [[str(k), _scalar(v)] for k, v in run.items()]
        out += [markdown_table(["key", "value"], rows, [False, False]), ""]
    else:
        out += [NOT_RECORDED, ""]
    return "\n".join(out).rstrip() + "\n"
