"""validate_report: producers get an error naming the bad field before anything is written."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from medusa_fed.errors import MedusaError
from medusa_fed.report import ReportError, validate_report, write_report


def _minimal() -> dict[str, Any]:
    return {
        "methods": ["medusa", "ties"],
        "teams": [
            {
                "name": "movie",
                "task": "movie",
                "controlled": True,
                "status": "ok",
                "owned_share": 0.5,
                "metrics": {
                    "before": {"accuracy": 0.5},
                    "merged": {"medusa": {"accuracy": 0.8}, "ties": {"accuracy": 0.7}},
                },
            }
        ],
    }


def test_absent_sections_are_filled_and_input_kept() -> None:
    # Prepare
    report = _minimal()
    # Execute
    checked = validate_report(report)
    # Assert
    for key in ("run", "base", "ownership", "conflicts", "bytes", "timings_s"):
        assert checked[key] == {}  # type: ignore[literal-required]
    assert checked["rejections"] == []
    assert checked["teams"] == report["teams"]
    assert "run" not in report  # the caller's dict is not modified


def _set(path: list[Any], value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(report: dict[str, Any]) -> None:
        node = report
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return edit


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (_set(["teams", 0, "status"], "gone"), "teams[0].status"),
        (_set(["teams", 0, "status"], "left out: "), "teams[0].status"),
        (_set(["teams", 0, "controlled"], "yes"), "teams[0].controlled"),
        (_set(["teams", 0, "owned_share"], 1.5), "teams[0].owned_share"),
        (_set(["teams", 0, "metrics", "merged", "dare"], {"accuracy": 0.1}), "merged"),
        (_set(["teams", 0, "metrics", "alone"], {"accuracy": float("nan")}), "alone.accuracy"),
        (_set(["teams", 0, "metrics", "during"], {}), "teams[0].metrics"),
        (_set(["methods"], ["medusa", "medusa"]), "methods"),
        (_set(["methods"], ["before"]), "methods"),
        (_set(["conflicts"], {"ties": {"elements_touched_by_2plus": -1, "share": 0.1}}), "ties"),
        (_set(["bytes"], {"movie": {"train": {"sent": 1.5}}}), "bytes.movie.train.sent"),
        (_set(["timings_s"], {"train": -3}), "timings_s.train"),
        (_set(["ownership"], {"teams": {"movie": 2.0}}), "ownership.teams.movie"),
        (_set(["rejections"], "none"), "rejections"),
    ],
)
def test_bad_fields_are_named(edit: Callable[[dict[str, Any]], None], field: str) -> None:
    # Prepare
    report = copy.deepcopy(_minimal())
    edit(report)
    # Execute
    with pytest.raises(ReportError) as err:
        validate_report(report)
    # Assert
    assert f"report.{field}" in str(err.value) or field in str(err.value)
    assert "report not written" in str(err.value)


def test_duplicate_team_names_are_refused() -> None:
    # Prepare
    report = _minimal()
    report["teams"].append(copy.deepcopy(report["teams"][0]))
    # Execute / Assert
    with pytest.raises(ReportError, match="distinct team names"):
        validate_report(report)


def test_report_error_is_a_medusa_value_error() -> None:
    assert issubclass(ReportError, MedusaError) and issubclass(ReportError, ValueError)


def test_invalid_report_writes_nothing(tmp_path: Path) -> None:
    # Prepare
    report = _minimal()
    report["teams"][0]["status"] = "maybe"
    # Execute
    with pytest.raises(ReportError):
        write_report(report, tmp_path / "run")
    # Assert
    assert not (tmp_path / "run").exists()
