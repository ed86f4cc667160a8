"""write_report: report.json, report.md and plots/*.png into the run directory, through RunDir."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medusa_fed.report.markdown import render_markdown
from medusa_fed.report.plots import PLOTS
from medusa_fed.report.schema import validate_report
from medusa_fed.rundir import RunDir

logger = logging.getLogger(__name__)

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
PLOTS_DIR = "plots"


@dataclass(frozen=True)
class ReportFiles:
    """Where the report went.

    json : Path
    markdown : Path
    plots : dict[str, Path]
        Plot name -> PNG path, only for the plots that had data.
    """

    json: Path
    markdown: Path
    plots: dict[str, Path]


def write_report(
    report: Mapping[str, Any], run_dir: RunDir | str | os.PathLike[str]
) -> ReportFiles:
    """Validate ``report`` and write report.json, report.md and the PNG plots into ``run_dir``.

    Every file is written atomically and recorded in the run directory's manifest. A plot whose
    section is empty (no ownership map, no baselines, no byte counts) is skipped and report.md
    says the section was not recorded.

    Parameters
    ----------
    report : Mapping[str, Any]
        The report dict (:mod:`medusa_fed.report.schema`); a ReportError names a bad field
        before anything is written.
    run_dir : RunDir | str | os.PathLike[str]
        The run directory, or its path (opened as a writer).
    """
    checked = validate_report(report)
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    plots: dict[str, str] = {}
    for name, draw in PLOTS.items():
        png = draw(checked)
        if png is None:
            logger.info("report: no data for plot %s; skipped", name)
            continue
        rel = f"{PLOTS_DIR}/{name}.png"
        run.write_bytes(rel, png)
        plots[name] = rel
    run.write_json(REPORT_JSON, checked)
    run.write_bytes(REPORT_MD, render_markdown(checked, plots).encode("utf-8"))
    logger.info("report: wrote report.json, report.md and %d plots to %s", len(plots), run.root)
    return ReportFiles(
        json=run.file_path(REPORT_JSON),
        markdown=run.file_path(REPORT_MD),
        plots={name: run.file_path(rel) for name, rel in plots.items()},
    )
