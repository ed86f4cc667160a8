"""``medusa show``: one object in full, with per-layer ownership shares and conflicts.

A *layer* groups tensors by name up to the first numeric part (``encoder.layer.3``), or by the
first part when there is none (``embeddings``, ``pooler``); LoRA / IA3 adapter names group the
same way. Shares are fractions of the layer's elements.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

import torch

from medusa_fed.history.branches import Store
from medusa_fed.history.db import ObjectRow
from medusa_fed.history.log import describe_line, pct
from medusa_fed.history.values import delta_of
from medusa_fed.ownership.ownership_map import NO_OWNER, OwnershipMap

_NUMERIC = re.compile(r"^\d+$")


def layer_of(name: str) -> str:
    """``encoder.layer.3.attention.self.query.weight`` -> ``encoder.layer.3``."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if _NUMERIC.match(part):
            return ".".join(parts[: i + 1])
    return parts[0]


def layer_key(layer: str) -> tuple[tuple[int, int | str], ...]:
    """Natural sort key: ``encoder.layer.2`` before ``encoder.layer.10``."""
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in layer.split("."))


def ownership_of(store: Store, row: ObjectRow) -> OwnershipMap:
    """Load an ownership object's map (hash-checked blob)."""
    sha = row.meta["blobs"]["map"]
    store.blobs.get(sha)  # verify before loading from the path
    return OwnershipMap.load(store.blobs.path(sha))


def ownership_table(ownership: OwnershipMap) -> list[str]:
    """Per layer: elements, each team's share, unowned share."""
    teams = list(ownership.teams)
    counts: dict[str, torch.Tensor] = {}
    for name, ids in ownership.owners.items():
        c = torch.bincount(ids.reshape(-1).to(torch.int64), minlength=256)[:256]
        counts[layer_of(name)] = counts.get(layer_of(name), torch.zeros(256, dtype=torch.int64)) + c
    rows = []
    for layer, c in sorted(counts.items(), key=lambda kv: layer_key(kv[0])):
        n = max(int(c.sum()), 1)
        rows.append(
            [
                layer,
                f"{int(c.sum()):,}",
                *(pct(int(c[i]) / n) for i in range(len(teams))),
                pct(int(c[NO_OWNER]) / n),
            ]
        )
    return _table(["layer", "elements", *teams, "unowned"], rows)


def touched_table(deltas: Mapping[str, Mapping[str, torch.Tensor]]) -> list[str]:
    """Per layer: elements, each branch's changed share, elements changed by 2+ branches."""
    keys = list(deltas)
    names = list(next(iter(deltas.values()))) if deltas else []
    acc: dict[str, list[int]] = {}
    for name in names:
        per = [(deltas[k][name] != 0) for k in keys if name in deltas[k]]
        if not per:
            continue
        stacked = torch.stack(per).to(torch.int16)
        layer = acc.setdefault(layer_of(name), [0] * (len(keys) + 2))
        layer[0] += per[0].numel()
        for i, k in enumerate(keys):
            layer[1 + i] += int((deltas[k][name] != 0).sum()) if name in deltas[k] else 0
        layer[-1] += int((stacked.sum(0) >= 2).sum())
    rows = [
        [layer, f"{v[0]:,}", *(pct(x / max(v[0], 1)) for x in v[1:-1]), f"{v[-1]:,}"]
        for layer, v in sorted(acc.items(), key=lambda kv: layer_key(kv[0]))
    ]
    return _table(["layer", "elements", *(f"{k} changed" for k in keys), "overlap"], rows)


def show_lines(store: Store, row: ObjectRow) -> list[str]:
    """Everything ``medusa show`` prints about ``row``."""
    m = row.meta
    lines = [describe_line(store, row), f"id        {row.id}", f"created   {row.created_at}"]
    runs = store.parents(row.id, "run")
    if runs:
        lines.append("runs      " + ", ".join(f"{r.short} {r.meta['path']}" for r in runs))
    if row.kind == "base":
        lines.append(f"sources   {', '.join(m.get('sources', []))}")
        layers: dict[str, int] = {}
        for name, shape in m.get("shapes", {}).items():
            layers[layer_of(name)] = layers.get(layer_of(name), 0) + _prod(shape)
        rows = [[k, f"{layers[k]:,}"] for k in sorted(layers, key=layer_key)]
        lines += ["", *_table(["layer", "elements"], rows)]
    elif row.kind == "run":
        lines.append("config    " + json.dumps(m.get("config", {}), sort_keys=True))
        lines.append("timings   " + json.dumps(m.get("timings_s", {})))
        for team, status in m.get("left_out", {}).items():
            lines.append(f"left out  {team}: {status}")
    elif row.kind == "ownership":
        lines.append("settings  " + json.dumps(m.get("settings", {}), sort_keys=True))
        lines += ["", "ownership share per layer:", *ownership_table(ownership_of(store, row))]
    elif row.kind == "branch":
        lines += _branch_lines(store, row)
    elif row.kind == "merge":
        lines += _merge_lines(store, row)
    return lines


def _branch_lines(store: Store, row: ObjectRow) -> list[str]:
    m = row.meta
    start = store.get(m["start"])
    lines = [
        f"start     {start.kind} {start.short} ({start.name})",
        f"data      {json.dumps(m.get('data', {}), sort_keys=True)} (a description; "
        "no data is stored)",
        f"metrics   {_metrics(m.get('metrics', {}))}",
        f"head      {'shared' if m['blobs'].get('head') else 'kept private'}",
    ]
    deltas = {row.name: delta_of(store, row)}
    lines += ["", "changed elements per layer:", *touched_table(deltas)]
    if m.get("ownership"):
        ownership = ownership_of(store, store.get(m["ownership"]))
        lines += [
            "",
            f"ownership share per layer (map {m['ownership'][:8]}):",
            *ownership_table(ownership),
        ]
    return lines


def _merge_lines(store: Store, row: ObjectRow) -> list[str]:
    m = row.meta
    start = store.get(m["start"])
    branches = {k: store.get(i) for k, i in m["inputs"].items()}
    lines = [
        f"start     {start.kind} {start.short} ({start.name})",
        "spec      " + json.dumps(m["spec"], sort_keys=True),
        "branches  "
        + ", ".join(f"{k} {r.short} ({r.meta['training']})" for k, r in branches.items()),
    ]
    if m.get("uncontrolled"):
        lines.append("uncontrolled (sign-elected) " + ", ".join(m["uncontrolled"]))
    for team, metrics in m.get("metrics", {}).items():
        lines.append(f"metrics   {team}: {_metrics(metrics)}")
    c = m.get("conflicts", {})
    if c:
        lines.append(
            f"conflicts {c.get('elements_touched_by_2plus', 0):,} elements changed by 2+ "
            f"branches ({pct(c.get('share', 0.0))})"
            + (
                f"; {c['sign_elected']:,} sign-elected, {c.get('discarded', 0):,} with a "
                "value discarded"
                if "sign_elected" in c
                else ""
            )
        )
    deltas = {k: delta_of(store, r) for k, r in branches.items()}
    lines += ["", "changed elements per layer and conflicts (overlap):", *touched_table(deltas)]
    maps = {r.meta.get("ownership") for r in branches.values()} - {None}
    if len(maps) == 1:
        map_id = str(maps.pop())
        lines += [
            "",
            f"ownership share per layer (map {map_id[:8]}):",
            *ownership_table(ownership_of(store, store.get(map_id))),
        ]
    return lines


def _metrics(metrics: Mapping[str, float]) -> str:
    return "  ".join(f"{k}={v:.4g}" for k, v in metrics.items()) or "-"


def _prod(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        rest = (f"{c:>{w}}" for c, w in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([f"{cells[0]:<{widths[0]}}", *rest])

    return [line(header), *(line(r) for r in rows)]


__all__ = ["layer_of", "ownership_table", "show_lines", "touched_table"]
