"""The report's figures, drawn with matplotlib's object API on the Agg canvas (no pyplot state).

Each ``plot_*`` function returns PNG bytes, or None when its section of the report is empty, so a
run with a team left out or without baselines still gets every figure it has data for.
"""

from __future__ import annotations

import io
import math
import re
from collections import defaultdict
from collections.abc import Sequence

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from medusa_fed.report.schema import STATUS_OK, Report, alone_label, phase_metrics

LAYER = re.compile(r"(?:^|\.)(?:layer|layers|h|blocks)\.(\d+)\.")
UNOWNED = "unowned"
DPI = 110


def layer_group(name: str) -> str:
    """The x-axis group of a tensor: ``"3"`` for ``encoder.layer.3.…``, else ``"embeddings"``
    (names containing ``embed``) or ``"other"`` (pooler, heads, final norms)."""
    match = LAYER.search(name)
    if match:
        return match.group(1)
    return "embeddings" if "embed" in name else "other"


def _group_order(group: str) -> tuple[int, int]:
    if group == "embeddings":
        return (0, 0)
    if group == "other":
        return (2, 0)
    return (1, int(group))


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    return buf.getvalue()


def _grouped_bars(
    ax: Axes, groups: Sequence[str], series: dict[str, list[float]], *, log: bool = False
) -> None:
    """Bars side by side per group, one colour per series; NaN leaves a gap."""
    n = max(len(series), 1)
    width = 0.8 / n
    for k, (label, values) in enumerate(series.items()):
        xs = [g + (k - (n - 1) / 2) * width for g in range(len(groups))]
        if log:  # a zero would be -inf on the log axis: leave a gap instead
            values = [v if v > 0 else math.nan for v in values]
        ax.bar(xs, values, width, label=label, log=log)
    rotate = len(groups) > 5
    ax.set_xticks(range(len(groups)), groups, rotation=30 if rotate else 0)
    if rotate:
        for tick in ax.get_xticklabels():
            tick.set_horizontalalignment("right")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))


def plot_ownership(report: Report) -> bytes | None:
    """Share of each layer's elements owned per team (stacked), weighted by tensor size."""
    tensors = report.get("ownership", {}).get("per_tensor", [])
    total: dict[str, int] = defaultdict(int)
    owned: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for t in tensors:
        group = layer_group(t["name"])
        total[group] += t["numel"]
        for team, share in t["share"].items():
            owned[team][group] += share * t["numel"]
        owned[UNOWNED][group] += t.get("unowned", 0.0) * t["numel"]
    groups = sorted((g for g in total if total[g] > 0), key=_group_order)
    if not groups:
        return None
    fig = Figure(figsize=(max(6.0, 0.6 * len(groups) + 3), 4))
    ax = fig.add_subplot()
    bottom = [0.0] * len(groups)
    for team in sorted(owned, key=lambda t: t == UNOWNED):  # unowned on top, grey
        values = [100.0 * owned[team][g] / total[g] for g in groups]
        color = "0.8" if team == UNOWNED else None
        ax.bar(groups, values, 0.7, bottom=bottom, label=team, color=color)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_xlabel("layer")
    ax.set_ylabel("elements owned (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Ownership share per layer")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _png(fig)


def plot_conflicts(report: Report) -> bytes | None:
    """Share of elements that two or more branches changed, per merge method."""
    conflicts = report.get("conflicts", {})
    if not conflicts:
        return None
    methods = list(conflicts)
    fig = Figure(figsize=(max(5.0, 0.9 * len(methods) + 2), 3.5))
    ax = fig.add_subplot()
    bars = ax.bar(methods, [100.0 * conflicts[m]["share"] for m in methods], 0.6)
    counts = [f"{conflicts[m]['elements_touched_by_2plus']:,}" for m in methods]
    ax.bar_label(bars, counts, fontsize=8)
    ax.set_ylabel("elements touched by 2+ branches (%)")
    ax.set_title("Conflicts per merge method")
    ax.tick_params(axis="x", labelrotation=20)
    return _png(fig)


def plot_accuracy(report: Report, metric: str = "accuracy") -> bytes | None:
    """``metric`` per team: before, alone, and merged by each method (grouped bars)."""
    teams = report["teams"]
    phases = ["before", "alone", *report["methods"]]
    series: dict[str, list[float]] = {}
    for phase in phases:
        values = []
        for team in teams:
            m = phase_metrics(team, phase)
            values.append(100.0 * m[metric] if m and metric in m else math.nan)
        if any(not math.isnan(v) for v in values):
            series[alone_label(report) if phase == "alone" else phase] = values
    if not series:
        return None
    fig = Figure(figsize=(max(6.0, 1.2 * len(teams) * max(1, len(series)) / 3 + 3), 4))
    ax = fig.add_subplot()
    labels = [t["name"] + ("" if t["status"] == STATUS_OK else "*") for t in teams]
    _grouped_bars(ax, labels, series)
    ax.set_ylabel(f"{metric} (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"{metric} per team and method")
    return _png(fig)


def plot_bytes(report: Report) -> bytes | None:
    """Bytes sent and received per team and stage against a dense fp32 payload (log scale)."""
    rows = [
        (f"{team}/{stage}", b)
        for team, stages in report.get("bytes", {}).items()
        for stage, b in stages.items()
    ]
    series = {
        "sent": [float(b.get("sent", 0)) for _, b in rows],
        "received": [float(b.get("received", 0)) for _, b in rows],
        "dense fp32": [float(b.get("dense_fp32", 0)) for _, b in rows],
    }
    if not rows or not any(v > 0 for values in series.values() for v in values):
        return None
    fig = Figure(figsize=(max(6.0, 0.8 * len(rows) + 3), 4))
    ax = fig.add_subplot()
    _grouped_bars(ax, [label for label, _ in rows], series, log=True)
    ax.set_ylabel("bytes (log scale)")
    ax.set_title("Payload size per team and stage vs dense fp32")
    return _png(fig)


PLOTS = {
    "ownership_per_layer": plot_ownership,
    "conflicts_per_method": plot_conflicts,
    "accuracy_per_team": plot_accuracy,
    "bytes_per_stage": plot_bytes,
}
