"""report: the run report (terminal table, report.json, report.md, PNG plots).

The coordinator fills a :class:`Report` dict stage by stage, prints :func:`render_table` and calls
:func:`write_report` at the end.
"""

from medusa_fed.report.schema import Report, ReportError, TeamEntry, validate_report
from medusa_fed.report.table import render_table
from medusa_fed.report.writer import ReportFiles, write_report

__all__ = [
    "Report",
    "ReportError",
    "ReportFiles",
    "TeamEntry",
    "render_table",
    "validate_report",
    "write_report",
]
