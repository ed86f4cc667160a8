"""Turn what the coordinator collected in a run into the report dict (medusa_fed.report.schema)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from medusa_fed.report.schema import LEFT_OUT, STATUS_OK

if TYPE_CHECKING:
    from .medusa_strategy import MedusaStrategy


def _prefixed(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    return {k[len(prefix) :]: float(v) for k, v in metrics.items() if k.startswith(prefix)}


def build_report(strategy: MedusaStrategy) -> dict[str, Any]:
    """The report of ``strategy``'s run so far (validated later by ``write_report``).

    ``alone`` is the team's own branch before any merge: its unmasked fine-tune when post-hoc
    baselines were run (the ceiling a merge is measured against), its masked one otherwise (in a
    multi-round run: the merge of the earlier rounds plus its own last round, before the final
    merge).
    ``before`` is the base encoder with a head trained alone (the floor).
    """
    s = strategy
    roster = s.roster
    teams = sorted(t for t in roster.node_of if t in roster.info)
    summary = s.ownership.summary() if s.ownership is not None else None
    entries = []
    for team in teams:
        info = roster.info[team]
        source = s.free if team in s.free.metrics else s.masked
        branch_metrics = source.metrics.get(team, {})
        before = _prefixed(s.masked.metrics.get(team, {}), "before_") or _prefixed(
            s.free.metrics.get(team, {}), "before_"
        )
        metrics: dict[str, Any] = {}
        if before:
            metrics["before"] = before
        alone = _prefixed(branch_metrics, "alone_")
        if alone:
            metrics["alone"] = alone
        merged = {label: m[team] for label, m in s.eval_metrics.items() if team in m}
        if merged:
            metrics["merged"] = merged
        controlled = bool(info.get("controlled", True))
        share = None
        if summary is not None and controlled and team in summary["share"]:
            share = float(summary["share"][team])
        left = roster.left_out.get(team)
        entries.append(
            {
                "name": team,
                "task": str(info.get("task", "?")),
                "controlled": controlled,
                "status": STATUS_OK if left is None else f"{LEFT_OUT}{left}",
                "owned_share": share,
                "metrics": metrics,
            }
        )
    report: dict[str, Any] = {
        "run": s.config.to_mapping(),
        "base": {"source": s.config.model, "fingerprint": s.fingerprint},
        "methods": list(s.merged),
        "teams": entries,
        "bytes": s.bytes,
        "timings_s": s.timings,
        "rejections": s.run_dir.rejections(),
    }
    if summary is not None:
        report["ownership"] = {
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
    conflicts = {}
    for label, stats in s.merge_stats.items():
        totals = stats["totals"]
        numel = max(int(totals["numel"]), 1)
        conflicts[label] = {
            "elements_touched_by_2plus": int(totals["overlap"]),
            "share": int(totals["overlap"]) / numel,
        }
    if conflicts:
        report["conflicts"] = conflicts
    return report
