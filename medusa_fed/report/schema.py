"""The run report: one JSON-able dict the coordinator fills stage by stage.

Shape (``Report``; every section but ``methods`` and ``teams`` may be absent or empty)::

    run        {config key: value}                 the validated run configuration
    base       {"source": str, "fingerprint": str}
    methods    ["medusa", "ties", ...]              merge methods evaluated, in display order
    teams      [TeamEntry]                          one per team, in display order
    ownership  {"teams": {team: share}, "per_tensor": [TensorShare]}
    conflicts  {method: {"elements_touched_by_2plus": int, "share": float}}
    bytes      {team: {stage: {"sent": int, "received": int, "dense_fp32": int}}}
    timings_s  {stage: seconds}
    rejections [{"team", "stage", "reason", "at"}]  as ``RunDir.rejections()`` returns them
    alone_from "unmasked" | "masked"                what ``alone`` scored: each team's unmasked
                                                    fine-tune (the ceiling; the default), or its
                                                    masked branch (a run without unmasked ones)

Semantics: shares are fractions in [0, 1] of all shared parameter elements (ownership) or of all
elements (conflicts: elements that two or more branches changed under that method). Metrics are
fractions (accuracy 0.81, not 81). ``bytes`` are counted by the coordinator: ``sent`` to the team,
``received`` from it, and ``dense_fp32`` the size of one dense fp32 copy of the tensors that
stage's payload covers (the yardstick for the codec's savings). A team's ``status`` is ``"ok"`` or
``"left out: <reason>"``; a left-out team may still carry the metrics it got before leaving.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NotRequired, TypedDict

from medusa_fed.errors import MedusaError

STATUS_OK = "ok"
LEFT_OUT = "left out: "


class ReportError(MedusaError):
    """A report dict does not have the documented shape; raised before anything is written."""


class TeamMetrics(TypedDict, total=False):
    before: dict[str, float]  # the base model (with the team's head) on the team's test split
    alone: dict[str, float]  # the team's own fine-tuned model, before any merge
    merged: dict[str, dict[str, float]]  # method -> metrics of the merged model


class TeamEntry(TypedDict):
    name: str
    task: str
    controlled: bool  # accepts an ownership mask
    status: str  # "ok" | "left out: <reason>"
    owned_share: float | None  # fraction of all elements it owns; None for uncontrolled teams
    metrics: TeamMetrics


class TensorShare(TypedDict):
    name: str
    numel: int
    share: dict[str, float]  # team -> fraction of this tensor's elements it owns
    unowned: float


class Ownership(TypedDict, total=False):
    teams: dict[str, float]
    per_tensor: list[TensorShare]


class Conflict(TypedDict):
    elements_touched_by_2plus: int
    share: float


class ByteCount(TypedDict):
    sent: int
    received: int
    dense_fp32: int


ALONE_FROM = ("unmasked", "masked")


class Report(TypedDict):
    methods: list[str]
    teams: list[TeamEntry]
    alone_from: NotRequired[str]
    run: NotRequired[dict[str, Any]]
    base: NotRequired[dict[str, Any]]
    ownership: NotRequired[Ownership]
    conflicts: NotRequired[dict[str, Conflict]]
    bytes: NotRequired[dict[str, dict[str, ByteCount]]]
    timings_s: NotRequired[dict[str, float]]
    rejections: NotRequired[list[dict[str, Any]]]


def phase_metrics(team: TeamEntry, phase: str) -> Mapping[str, float] | None:
    """A team's metrics for ``phase``: ``"before"``, ``"alone"``, or a merge method's name."""
    metrics = team.get("metrics", {})
    if phase == "before":
        return metrics.get("before")
    if phase == "alone":
        return metrics.get("alone")
    return metrics.get("merged", {}).get(phase)


def _fail(where: str, expected: str, found: Any) -> ReportError:
    return ReportError(f"report.{where}: expected {expected}, found {found!r}; report not written")


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _fail(where, "an object", value)
    return value


def _number(value: Any, where: str, lo: float | None = None, hi: float | None = None) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (lo is not None and value < lo - 1e-9) or (hi is not None and value > hi + 1e-9):
        bounds = f" in [{lo}, {hi}]" if lo is not None else ""
        raise _fail(where, f"a finite number{bounds}", value)
    return float(value)


def _count(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _fail(where, "a non-negative integer", value)
    return value


def _metrics(value: Any, where: str) -> None:
    for k, v in _mapping(value, where).items():
        _number(v, f"{where}.{k}")


def _team(team: Any, i: int, methods: set[str]) -> None:
    where = f"teams[{i}]"
    team = _mapping(team, where)
    for key in ("name", "task", "status"):
        if not isinstance(team.get(key), str) or not team[key]:
            raise _fail(f"{where}.{key}", "a non-empty string", team.get(key))
    if not isinstance(team.get("controlled"), bool):
        raise _fail(f"{where}.controlled", "true or false", team.get("controlled"))
    status = team["status"]
    if status != STATUS_OK and not (status.startswith(LEFT_OUT) and status[len(LEFT_OUT) :]):
        raise _fail(f"{where}.status", f"'{STATUS_OK}' or '{LEFT_OUT}<reason>'", status)
    if team.get("owned_share") is not None:
        _number(team["owned_share"], f"{where}.owned_share", 0.0, 1.0)
    metrics = _mapping(team.get("metrics", {}), f"{where}.metrics")
    unknown = set(metrics) - {"before", "alone", "merged"}
    if unknown:
        raise _fail(f"{where}.metrics", "keys before/alone/merged", sorted(unknown))
    for phase in ("before", "alone"):
        if phase in metrics:
            _metrics(metrics[phase], f"{where}.metrics.{phase}")
    for method, m in _mapping(metrics.get("merged", {}), f"{where}.metrics.merged").items():
        if method not in methods:
            raise _fail(f"{where}.metrics.merged", "methods listed in report.methods", method)
        _metrics(m, f"{where}.metrics.merged.{method}")


def alone_label(report: Mapping[str, Any], long: bool = False) -> str:
    """What the ``alone`` column is called: each team's unmasked fine-tune ("alone"), or, in a
    run that trained none, its own masked branch ("own branch")."""
    if report.get("alone_from", "unmasked") == "masked":
        return "own masked branch" if long else "own branch"
    return "fine-tuned alone" if long else "alone"


def validate_report(report: Mapping[str, Any]) -> Report:
    """Check ``report`` against the documented shape; return it with absent sections filled.

    Raises
    ------
    ReportError
        Naming the first offending field (``report.teams[1].metrics.merged.ties.accuracy``).
    """
    report = _mapping(report, "(root)")
    methods = report.get("methods")
    if not isinstance(methods, list) or not all(isinstance(m, str) and m for m in methods):
        raise _fail("methods", "a list of method names", methods)
    if {"before", "alone"} & set(methods):
        raise _fail("methods", "method names other than 'before' and 'alone'", methods)
    if len(set(methods)) != len(methods):
        raise _fail("methods", "distinct names", methods)
    teams = report.get("teams")
    if not isinstance(teams, list):
        raise _fail("teams", "a list of team entries", teams)
    for i, team in enumerate(teams):
        _team(team, i, set(methods))
    names = [t["name"] for t in teams]
    if len(set(names)) != len(names):
        raise _fail("teams", "distinct team names", names)
    ownership = _mapping(report.get("ownership", {}), "ownership")
    for team, share in _mapping(ownership.get("teams", {}), "ownership.teams").items():
        _number(share, f"ownership.teams.{team}", 0.0, 1.0)
    for i, t in enumerate(ownership.get("per_tensor", [])):
        t = _mapping(t, f"ownership.per_tensor[{i}]")
        if not isinstance(t.get("name"), str):
            raise _fail(f"ownership.per_tensor[{i}].name", "a tensor name", t.get("name"))
        _count(t.get("numel"), f"ownership.per_tensor[{i}].numel")
        _number(t.get("unowned", 0.0), f"ownership.per_tensor[{i}].unowned", 0.0, 1.0)
        for team, share in _mapping(t.get("share", {}), f"ownership.per_tensor[{i}]").items():
            _number(share, f"ownership.per_tensor[{i}].share.{team}", 0.0, 1.0)
    for method, c in _mapping(report.get("conflicts", {}), "conflicts").items():
        c = _mapping(c, f"conflicts.{method}")
        _count(c.get("elements_touched_by_2plus"), f"conflicts.{method}.elements_touched_by_2plus")
        _number(c.get("share"), f"conflicts.{method}.share", 0.0, 1.0)
    for team, stages in _mapping(report.get("bytes", {}), "bytes").items():
        for stage, b in _mapping(stages, f"bytes.{team}").items():
            b = _mapping(b, f"bytes.{team}.{stage}")
            for key in ("sent", "received", "dense_fp32"):
                _count(b.get(key, 0), f"bytes.{team}.{stage}.{key}")
    for stage, s in _mapping(report.get("timings_s", {}), "timings_s").items():
        _number(s, f"timings_s.{stage}", 0.0)
    if not isinstance(report.get("rejections", []), list):
        raise _fail("rejections", "a list", report.get("rejections"))
    if report.get("alone_from", "unmasked") not in ALONE_FROM:
        raise _fail("alone_from", " or ".join(ALONE_FROM), report.get("alone_from"))
    filled: dict[str, Any] = {
        "alone_from": "unmasked",
        "run": {},
        "base": {},
        "ownership": {},
        "conflicts": {},
        "bytes": {},
        "timings_s": {},
        "rejections": [],
    }
    filled.update(report)
    return filled  # type: ignore[return-value]
