"""The benchmark's output: Markdown tables in the paper's layout, results.json, PNG plots.

Table per setting: one row per method, one column per task, then the average and the average
normalised by each team's alone accuracy (the paper's "normalised accuracy"); every number is
the mean over seeds, with the standard deviation when there are several.
"""

from __future__ import annotations

import io
import json
import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

from medusa_fed.rundir.atomic import atomic_write

from .benchmark import BenchConfig, Cell


def _fmt(values: Sequence[float]) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "-"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{100 * mean:.1f}"
    return f"{100 * mean:.1f} ± {100 * statistics.stdev(values):.1f}"


def summarize(cells: Sequence[Cell]) -> dict[str, dict[str, dict[str, list[float]]]]:
    """setting -> method -> column (task names, avg, norm, val, seconds) -> values over seeds."""
    alone = {(c.setting, c.seed): c.test for c in cells if c.method == "alone"}
    out: dict[str, dict[str, dict[str, list[float]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list))
    )
    for c in cells:
        col = out[c.setting][c.method]
        for team, acc in c.test.items():
            col[team].append(acc)
        col["avg"].append(c.mean)
        ref = alone.get((c.setting, c.seed), {})
        if ref:
            col["norm"].append(statistics.fmean(c.test[t] / ref[t] for t in c.test if ref.get(t)))
        col["val"].append(c.validation)  # NaN where not scored (alone, floor)
        col["seconds"].append(c.seconds)
    return out


FLOORS = ("untuned", "floor (head only)")  # the floor rows (simulations.benchmark)


def alone_gains(cells: Sequence[Cell], setting: str) -> tuple[str, dict[str, list[float]]] | None:
    """(floor row, team -> alone minus floor test accuracy per seed) for one setting; None when
    the setting has no alone or no floor cells (a --medusa-only run)."""
    alone = {c.seed: c.test for c in cells if c.setting == setting and c.method == "alone"}
    floor = {c.seed: c for c in cells if c.setting == setting and c.method in FLOORS}
    seeds = sorted(set(alone) & set(floor))
    if not seeds:
        return None
    # a team left out of one seed's run has no score there: only teams scored in every seed
    teams = [t for t in alone[seeds[0]] if all(t in alone[s] and t in floor[s].test for s in seeds)]
    gains = {t: [alone[s][t] - floor[s].test[t] for s in seeds] for t in teams}
    return (floor[seeds[0]].method, gains) if gains else None


def markdown(cells: Sequence[Cell], cfg: BenchConfig, wall_s: float) -> str:
    summary = summarize(cells)
    seeds = sorted({c.seed for c in cells})
    lines = [
        "# Merged-model quality: Medusa against post-hoc merges",
        "",
        f"Base {cfg.model}, {cfg.method} fine-tuning, {cfg.max_train} train / "
        f"{cfg.max_eval} validation / {cfg.max_eval} test examples per task"
        f"{' (classes balanced)' if cfg.class_balance else ''}, "
        f"{cfg.epochs:g} epochs, lr {cfg.lr:g}, batch {cfg.batch_size}, max length "
        f"{cfg.max_length}, probe {cfg.probe_epochs:g} epoch; seeds {seeds}. Test accuracy "
        "(%), mean ± std over seeds; `norm` = merged / alone accuracy averaged over teams; "
        "`val` = mean validation accuracy of the merge as chosen (heads as trained, no re-fit: "
        "the figure to choose by, never the test columns). "
        "Every row is a run of the coordinator's pipeline; a compared merge's settings are "
        "chosen on validation (grid below) and every merge gets the head re-fit of the run. "
        f"Wall time {wall_s / 60:.1f} min.",
        "",
    ]
    for setting, methods in summary.items():
        teams = setting.split("+")
        lines += [
            f"## {len(teams)} teams: {', '.join(teams)}",
            "",
            "| method | " + " | ".join(teams) + " | avg | norm | val | chosen | s |",
            "|---|" + "---|" * (len(teams) + 5),
        ]
        chosen: dict[str, list[str]] = {}
        for c in cells:
            if c.setting == setting:
                chosen.setdefault(c.method, []).append(
                    ",".join(
                        str(v) if k == "merge" else f"{k}={v:g}"
                        for k, v in c.params.items()
                        if k in ("merge", "scale", "density", "drop_rate", "common_fraction")
                    )
                )
        for method, col in methods.items():
            row = [
                method,
                *(_fmt(col[t]) for t in teams),
                _fmt(col["avg"]),
                _fmt(col["norm"]) if col["norm"] else "-",
                _fmt(col["val"]),
                "; ".join(sorted(set(chosen.get(method, [])))) or "-",
                f"{statistics.fmean(col['seconds']):.0f}",
            ]
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
        gains = alone_gains(cells, setting)
        if gains:
            lines += [
                f"Each team alone over the `{gains[0]}` row (test points, per seed, then mean "
                "± std): " + ", ".join(f"{t} {_fmt(g)}" for t, g in gains[1].items()) + ".",
                "",
            ]
    lines += ["## Grid searched on validation", ""]
    lines += [f"- `{choice}`" for choice in cfg.grid]
    lines += [f"- federated `fed-{choice}` (rounds as Medusa's)" for choice in cfg.federated]
    lines += ["", "## Medusa variants (run-config overrides on the coordinator's defaults)", ""]
    for v in cfg.variants:
        keys = ", ".join(f"{k}={val}" for k, val in v.overrides) or "(none: the default)"
        lines.append(
            f"- {v.name}: {keys}" + (", last team uncontrolled" if v.uncontrolled_last else "")
        )
    return "\n".join(lines) + "\n"


def plot(cells: Sequence[Cell]) -> dict[str, bytes]:
    """accuracy.png (per task and method) and normalized.png (avg merged / alone) per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarize(cells)
    out = {}
    for kind in ("accuracy", "normalized"):
        fig, axes = plt.subplots(1, len(summary), figsize=(7 * len(summary), 5), squeeze=False)
        for ax, (setting, methods) in zip(axes[0], summary.items(), strict=True):
            names = list(methods)
            if kind == "accuracy":
                teams = setting.split("+")
                width = 0.8 / len(teams)
                for i, team in enumerate(teams):
                    ys = [100 * statistics.fmean(methods[m][team]) for m in names]
                    ax.bar([x + i * width for x in range(len(names))], ys, width, label=team)
                ax.set_ylabel("test accuracy (%)")
                ax.legend(fontsize=8)
            else:
                ys = [
                    statistics.fmean(methods[m]["norm"]) if methods[m]["norm"] else 0 for m in names
                ]
                ax.bar(range(len(names)), ys, color="tab:purple")
                ax.axhline(1.0, color="gray", lw=0.8)
                ax.set_ylabel("merged / alone accuracy")
            ax.set_xticks(range(len(names)))
            ax.set_xticklabels(names, rotation=60, ha="right", fontsize=8)
            ax.set_title(setting)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        plt.close(fig)
        out[f"{kind}.png"] = buf.getvalue()
    return out


def write(out_dir: Path, cells: Sequence[Cell], cfg: BenchConfig, wall_s: float) -> Path:
    """Write results.json, results.md and the plots into ``out_dir``; return the Markdown path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {
        "config": {**asdict(cfg), "variants": [asdict(v) for v in cfg.variants]},
        "wall_s": round(wall_s, 1),
        "cells": [{**asdict(c), "mean": c.mean} for c in cells],
    }
    atomic_write(out_dir / "results.json", json.dumps(payload, indent=2, default=str).encode())
    md = markdown(cells, cfg, wall_s)
    atomic_write(out_dir / "results.md", md.encode())
    for name, png in plot(cells).items():
        atomic_write(out_dir / name, png)
    return out_dir / "results.md"


def read(out_dir: Path) -> tuple[list[Cell], BenchConfig, float]:
    """The cells, config and wall time a ``write`` left in ``out_dir`` (results.json)."""
    from .benchmark import MedusaVariant

    path = out_dir / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: expected a benchmark's results.json, found none")
    data = json.loads(path.read_text())
    raw = dict(data["config"])
    raw["variants"] = tuple(
        MedusaVariant(v["name"], tuple(tuple(o) for o in v["overrides"]), v["uncontrolled_last"])
        for v in raw["variants"]
    )
    raw["grid"] = tuple(raw["grid"])
    raw["federated"] = tuple(raw.get("federated", ()))
    raw["teams"] = tuple(raw["teams"])
    raw["settings"] = tuple(tuple(t) for t in raw["settings"])
    raw["seeds"] = tuple(raw["seeds"])
    names = {f.name for f in fields(Cell)}
    cells = [Cell(**{k: v for k, v in c.items() if k in names}) for c in data["cells"]]
    return cells, BenchConfig(**raw), float(data["wall_s"])


def combine(dirs: Sequence[Path], out_dir: Path) -> Path:
    """One report from several runs of the same benchmark (e.g. one seed per run or machine):
    cells are pooled, seeds and variants united, wall times added. Runs must agree on every
    other setting."""
    cells: list[Cell] = []
    cfg: BenchConfig | None = None
    wall = 0.0
    seeds: list[int] = []
    variants: dict[str, Any] = {}
    for d in dirs:
        more, c, w = read(d)
        if cfg is not None:
            free = ("seeds", "variants", "medusa_only", "out")
            mine = {k: v for k, v in asdict(c).items() if k not in free}
            theirs = {k: v for k, v in asdict(cfg).items() if k not in free}
            diff = sorted(k for k in mine if mine[k] != theirs[k])
            if diff:
                raise ValueError(f"{d}: settings {diff} differ from {dirs[0]}; cannot combine")
        cfg = cfg or c
        cells += more
        wall += w
        seeds += [s for s in c.seeds if s not in seeds]
        variants.update({v.name: v for v in c.variants})
    assert cfg is not None, "combine: no directories given"
    seen = Counter((c.setting, c.seed, c.method) for c in cells)
    twice = sorted(k for k, n in seen.items() if n > 1)
    if twice:
        raise ValueError(
            f"cells {twice[:3]} come from more than one run; combine runs of different seeds "
            "or variants (a --medusa-only run adds variants to runs of the same seeds)"
        )
    cfg = replace(cfg, seeds=tuple(seeds), variants=tuple(variants.values()), medusa_only=False)
    return write(out_dir, cells, cfg, wall)
