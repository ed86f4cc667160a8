"""Has each team alone converged at the benchmark's budget? Train it at B and at 2B and compare.

``medusa bench --mode standard --check-convergence`` fine-tunes every task of the mode alone
(unmasked, from the base, the way a team's free branch is trained) at the mode's budget B (its
epochs) and at ``factor`` x B, for every seed, and scores both on the team's **validation** split
with the head as trained (never test: the budget is a choice). A budget is converged for a task
when the accuracy moves by less than ``tolerance`` (1 point) when the budget doubles.

The data, settings and training are the team site's own (:class:`clients.team_site.TeamSite`'s
``data`` and ``base``, the run's :func:`medusa_fed.pipeline.state.settings_of`), so the check
trains exactly what the benchmark's "alone" row trains at B.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from clients.team_site import TeamSite
from medusa_fed.pipeline.state import settings_of
from medusa_fed.team_config import TeamConfig
from medusa_fed.training.branch import finetune, num_labels_of, prompter_of
from medusa_fed.training.evaluate import evaluate

from .benchmark import BenchConfig, MedusaVariant, label


@dataclass(frozen=True)
class Convergence:
    """One task and seed: validation accuracy alone at budget B and at factor x B."""

    task: str
    seed: int
    epochs: float  # B
    factor: float
    at_budget: float  # validation accuracy at B
    at_more: float  # validation accuracy at factor x B

    @property
    def moved(self) -> float:
        """Accuracy change when the budget grows (positive: more training helps)."""
        return self.at_more - self.at_budget


def alone_validation(cfg: BenchConfig, task: str, seed: int, epochs: float) -> float:
    """Validation accuracy of ``task`` fine-tuned alone for ``epochs`` under ``cfg``."""
    config = cfg.run_config(seed, MedusaVariant("default"), Path(cfg.out), compare=False)
    settings = settings_of(config, epochs=epochs)
    site = TeamSite(TeamConfig(label(task), task))
    base, data = site.base(settings), site.data(settings)
    result = finetune(base, data, settings.train_config(), desc=f"alone {label(task)} {epochs:g}")
    start = base.shared_state()
    tuned = {n: start[n] + d for n, d in result.delta.items()}
    metrics = evaluate(
        base,
        tuned,
        result.head,
        data.validation,
        num_labels=num_labels_of(base, data),
        max_length=settings.max_length,
        desc=f"validation {label(task)}",
        prompter=prompter_of(base, data),
    )
    return float(metrics["accuracy"])


def check_convergence(
    cfg: BenchConfig, factor: float = 2.0, progress: Callable[[str], None] | None = None
) -> list[Convergence]:
    """Every task of ``cfg`` alone at its budget and at ``factor`` times it, every seed."""
    rows = []
    for seed in cfg.seeds:
        for task in cfg.teams:
            accs = []
            for epochs in (cfg.epochs, factor * cfg.epochs):
                if progress:
                    progress(f"{label(task)} seed {seed}: alone for {epochs:g} epochs")
                accs.append(alone_validation(cfg, task, seed, epochs))
            rows.append(Convergence(label(task), seed, cfg.epochs, factor, *accs))
    return rows


def report(rows: list[Convergence], tolerance: float = 0.01) -> str:
    """A Markdown table of the rows and the verdict (every task's mean move below tolerance)."""
    b = rows[0].epochs if rows else 0.0
    more = f"{rows[0].factor * b:g}" if rows else "-"
    lines = [
        f"| task | seed | val @ {b:g} ep | val @ {more} ep | moved (points) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.task} | {r.seed} | {100 * r.at_budget:.1f} | {100 * r.at_more:.1f} | "
            f"{100 * r.moved:+.1f} |"
        )
    by_task: dict[str, list[float]] = {}
    for r in rows:
        by_task.setdefault(r.task, []).append(r.moved)
    means = {t: statistics.fmean(v) for t, v in by_task.items()}
    slow = sorted(t for t, m in means.items() if abs(m) >= tolerance)
    lines += [
        "",
        "mean move per task over seeds: "
        + ", ".join(f"{t} {100 * m:+.1f}" for t, m in means.items()),
        (
            f"converged: every task moves by less than {100 * tolerance:g} point(s)"
            if not slow
            else f"NOT converged (moves of {100 * tolerance:g} point(s) or more): "
            + ", ".join(slow)
        ),
    ]
    return "\n".join(lines) + "\n"
