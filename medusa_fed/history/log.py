"""``medusa log``: the store's history as a tree, base -> runs -> branches -> merges.

Each line is one object: kind, short id, name and what matters about it (training kind and the
team's own metric for a branch; inputs, conflicts and the teams' metrics for a merge). Objects
that start from a merge (a team that joined later, and the merge onto the earlier result) are
drawn under that merge, so the tree reads like ``git log --graph`` turned sideways.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from medusa_fed.history.branches import Store
from medusa_fed.history.db import ObjectRow

HEADLINE_METRICS = ("accuracy", "perplexity", "macro_f1")
_ORDER = {"ownership": 0, "branch": 1, "merge": 2, "run": 3}


def headline(metrics: Mapping[str, float], prefix: str = "") -> str:
    """``accuracy 0.875`` from the first known metric (``prefix``: e.g. ``alone_``); '' if none."""
    for key in HEADLINE_METRICS:
        if prefix + key in metrics:
            return f"{key} {float(metrics[prefix + key]):.3f}"
    return ""


def pct(x: float) -> str:
    return f"{100.0 * float(x):.1f}%"


def describe_line(store: Store, row: ObjectRow) -> str:
    """The one-line summary of ``row`` used by ``medusa log``."""
    m = row.meta
    if row.kind == "base":
        n_tensors = len(m.get("shapes", {}))
        return (
            f"base {row.short}  {m['source']}  {m['family']}/{m['method']}  "
            f"{n_tensors} tensors, {m.get('numel', 0):,} elements  "
            f"fingerprint {m['fingerprint'][:12]}"
        )
    if row.kind == "run":
        teams = ", ".join(
            t + ("" if v.get("controlled", True) else " (uncontrolled)")
            for t, v in m.get("teams", {}).items()
        )
        left = f"  left out: {', '.join(m['left_out'])}" if m.get("left_out") else ""
        return (
            f"run {row.short}  {m['path']}  {m.get('status', '?')}  teams {teams or '-'}  "
            f"imported {m.get('imported_at', '?')[:19]}{left}"
        )
    if row.kind == "ownership":
        settings = m.get("settings", {})
        how = "/".join(str(settings[k]) for k in ("assignment", "unselected") if k in settings)
        if "joined" in settings:
            how = f"+{settings['joined']} ({settings.get('policy', 'free')})"
        shares = "  ".join(f"{t} {pct(s)}" for t, s in m.get("share", {}).items())
        return f"ownership {row.short}  {how}  {shares}  unowned {pct(m.get('unowned', 0.0))}"
    if row.kind == "branch":
        data = m.get("data", {})
        task = f"  task {data['task']}" if data.get("task") else ""
        metric = headline(m.get("metrics", {}), "alone_")
        owned = m.get("metrics", {}).get("train_owned_fraction")
        own = f"  owns {pct(owned)}" if owned is not None and m.get("ownership") else ""
        return f"branch {row.short}  {row.name}  {m['training']}/{m['method']}{task}{own}" + (
            f"  alone {metric}" if metric else ""
        )
    if row.kind == "merge":
        inputs = ", ".join(f"{k} {v[:8]}" for k, v in m["inputs"].items())
        conflicts = m.get("conflicts", {})
        overlap = conflicts.get("elements_touched_by_2plus")
        conf = (
            f"  conflicts {overlap:,} ({pct(conflicts.get('share', 0.0))})"
            if overlap is not None
            else ""
        )
        scores = "  ".join(
            f"{t} {headline(v)}" for t, v in m.get("metrics", {}).items() if headline(v)
        )
        return f"merge {row.short}  {m.get('label', row.name)}  <- {inputs}{conf}" + (
            f"  | {scores}" if scores else ""
        )
    return f"{row.kind} {row.short}  {row.name}"


def render_log(store: Store) -> list[str]:
    """Every base of the store with its runs, branches and merges, as tree lines."""
    lines: list[str] = []
    for base in store.db.objects("base"):
        lines.append(describe_line(store, base))
        items: list[tuple[str, ObjectRow | None, list[ObjectRow]]] = []
        in_runs: set[str] = set()
        for run in store.children(base.id, "base"):
            if run.kind != "run":
                continue
            members = [r for r in store.children(run.id, "run") if _roots_at(store, r, base.id)]
            in_runs.update(r.id for r in members)
            items.append(("run", run, members))
        loose = [r for r in _rooted(store, base.id) if r.id not in in_runs]
        _draw_level(store, [(run, members) for _, run, members in items], loose, "", lines)
    if not lines:
        lines.append(f"(empty store {store.root}: import a run with `medusa import RUN_DIR`)")
    return lines


def _roots_at(store: Store, row: ObjectRow, base_id: str) -> bool:
    """Whether ``row`` hangs directly off the base (not off a merge)."""
    if row.kind == "ownership":
        return not store.db.parents(row.id, "previous") and row.meta.get("base") == base_id
    return row.meta.get("start") == base_id


def _rooted(store: Store, base_id: str) -> list[ObjectRow]:
    rows = store.children(base_id, "start") + [
        r
        for r in store.children(base_id, "base")
        if r.kind == "ownership" and not store.db.parents(r.id, "previous")
    ]
    return _sorted(rows)


def _sorted(rows: Iterable[ObjectRow]) -> list[ObjectRow]:
    return sorted(rows, key=lambda r: (_ORDER.get(r.kind, 9), r.seq))


def _draw_level(
    store: Store,
    runs: list[tuple[ObjectRow | None, list[ObjectRow]]],
    loose: list[ObjectRow],
    prefix: str,
    lines: list[str],
) -> None:
    entries: list[tuple[ObjectRow, list[ObjectRow] | None]] = [
        (run, _sorted(members)) for run, members in runs if run is not None
    ]
    entries += [(r, None) for r in _sorted(loose)]
    for i, (row, members) in enumerate(entries):
        last = i == len(entries) - 1
        lines.append(prefix + ("└── " if last else "├── ") + describe_line(store, row))
        below = prefix + ("    " if last else "│   ")
        if members is not None:
            _draw_level(store, [], members, below, lines)
        elif row.kind == "merge":
            _draw_level(store, [], store.children(row.id, "start"), below, lines)


__all__ = ["describe_line", "headline", "pct", "render_log"]
