"""RunOutcome: what one run produced, as a value (the report, the tables and the benchmark read it).

``alone`` is a team's own branch before any merge: its unmasked fine-tune when post-hoc merges were
compared (the ceiling a merge is measured against), its masked one otherwise (the report's
``alone_from`` says which, and the tables call the column "own branch" then). ``before`` is the
base encoder with a head trained alone (the floor).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from medusa_fed.deltas import StateDict
from medusa_fed.pipeline.state import RunState
from medusa_fed.report.schema import LEFT_OUT, STATUS_OK


@dataclass(frozen=True)
class TeamOutcome:
    name: str
    task: str
    controlled: bool
    left_out: str | None  # "stage: reason", or None while in the run
    owned_share: float | None
    before: dict[str, float] = field(default_factory=dict)
    alone: dict[str, float] = field(default_factory=dict)
    merged: dict[str, dict[str, float]] = field(default_factory=dict)  # method label -> metrics


@dataclass(frozen=True)
class RunOutcome:
    run: dict[str, Any]  # the run config, kebab-case
    fingerprint: str
    teams: list[TeamOutcome]
    methods: list[str]  # labels of the kept merges, the run's own first
    merged: dict[str, StateDict]  # label -> merged shared weights
    chosen: dict[str, dict[str, float]]  # label -> the settings the merge used
    validation: dict[str, float]  # label -> mean validation score (grids only)
    bytes: dict[str, dict[str, dict[str, int]]]
    timings_s: dict[str, float]
    rejections: list[dict[str, str]]
    ownership: dict[str, Any] | None
    conflicts: dict[str, dict[str, float]]
    alone_from: str = "unmasked"  # "masked": no unmasked branch was trained (schema.ALONE_FROM)

    @classmethod
    def of(cls, state: RunState) -> RunOutcome:
        roster = state.roster
        summary = state.ownership.summary() if state.ownership is not None else None
        teams = []
        for team in sorted(t for t in roster.node_of if t in roster.hello):
            info = roster.hello[team]
            branch = state.free if team in state.free.metrics else state.masked
            before = _prefixed(state.masked.metrics.get(team, {}), "before_") or _prefixed(
                state.free.metrics.get(team, {}), "before_"
            )
            share = None
            if summary is not None and info.controlled and team in summary["share"]:
                share = float(summary["share"][team])
            teams.append(
                TeamOutcome(
                    name=team,
                    task=info.task,
                    controlled=info.controlled,
                    left_out=roster.left_out.get(team),
                    owned_share=share,
                    before=before,
                    alone=_prefixed(branch.metrics.get(team, {}), "alone_"),
                    merged={m: s[team] for m, s in state.eval_metrics.items() if team in s},
                )
            )
        conflicts = {}
        for label, stats in state.merge_stats.items():
            totals = stats["totals"]
            numel = max(int(totals["numel"]), 1)
            conflicts[label] = {
                "elements_touched_by_2plus": int(totals["overlap"]),
                "share": int(totals["overlap"]) / numel,
            }
        return cls(
            run=state.config.to_mapping(),
            fingerprint=state.fingerprint,
            teams=teams,
            methods=list(state.merged),
            merged=dict(state.merged),
            chosen=dict(state.chosen),
            validation=dict(state.validation),
            bytes=state.bytes,
            timings_s=state.timings,
            rejections=state.run_dir.rejections(),
            ownership=_ownership(summary),
            conflicts=conflicts,
            alone_from="unmasked" if state.free.metrics else "masked",
        )

    def report(self) -> dict[str, Any]:
        """The report dict (``medusa_fed.report.schema``; validated by ``write_report``)."""
        entries = []
        for t in self.teams:
            metrics: dict[str, Any] = {}
            if t.before:
                metrics["before"] = t.before
            if t.alone:
                metrics["alone"] = t.alone
            if t.merged:
                metrics["merged"] = t.merged
            entries.append(
                {
                    "name": t.name,
                    "task": t.task,
                    "controlled": t.controlled,
                    "status": STATUS_OK if t.left_out is None else f"{LEFT_OUT}{t.left_out}",
                    "owned_share": t.owned_share,
                    "metrics": metrics,
                }
            )
        report: dict[str, Any] = {
            "run": self.run,
            "base": {"source": self.run["model"], "fingerprint": self.fingerprint},
            "methods": self.methods,
            "teams": entries,
            "bytes": self.bytes,
            "timings_s": self.timings_s,
            "rejections": self.rejections,
            "alone_from": self.alone_from,
        }
        if self.ownership is not None:
            report["ownership"] = self.ownership
        if self.conflicts:
            report["conflicts"] = self.conflicts
        return report


def _prefixed(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    return {k[len(prefix) :]: float(v) for k, v in metrics.items() if k.startswith(prefix)}


def _ownership(summary: dict[str, Any] | None) -> dict[str, Any] | None:
    if summary is None:
        return None
    return {
        "teams": {t: float(v) for t, v in summary["share"].items()},
        "per_tensor": [
            {
                "name": name,
                "numel": int(t["numel"]),
                "share": {k: float(v) for k, v in t["share"].items()},
                "unowned": float(t["unowned"]),
            }
            for name, t in summary["tensors"].items()
        ],
    }
