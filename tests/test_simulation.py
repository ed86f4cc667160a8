"""End to end on Flower's simulation engine (Ray): the real ServerApp and ClientApp on a tiny BERT.

One Ray run is shared by the assertions (Ray's start-up dominates a tiny run's time); the
in-process backend must give the same merged model for the same seed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from medusa_fed.cli import app
from medusa_fed.errors import ConfigError
from medusa_fed.rundir.run_dir import RunDir
from medusa_fed.training import load_base
from medusa_fed.training.config import ModelSpec
from simulations.simulate import parse_teams, simulate


@pytest.fixture(scope="module")
def ray_run(tiny_bert, tiny_tasks, tiny_run_config, tmp_path_factory):  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("sim") / "ray"
    teams = parse_teams(
        ",".join(f"{n}={p}" for n, p in sorted(tiny_tasks.items())), uncontrolled=["gamma"]
    )
    config = tiny_run_config(tiny_bert, out, compare="ties")
    report = simulate(config, teams, backend="ray")
    return report, out, teams, config


def test_ray_simulation_runs_every_stage(ray_run):
    report, out, _, _ = ray_run
    assert report["methods"] == ["medusa", "ties"]
    names = {t["name"]: t for t in report["teams"]}
    assert set(names) == {"alpha", "beta", "gamma"}
    assert names["gamma"]["controlled"] is False
    for team in names.values():
        assert team["status"] == "ok"
        assert 0.0 <= team["metrics"]["merged"]["medusa"]["accuracy"] <= 1.0
    assert (out / "report.md").is_file() and (out / "plots" / "ownership_per_layer.png").is_file()


def test_simulation_merge_is_base_plus_owned_deltas_and_matches_inprocess(
    ray_run, tmp_path, monkeypatch
):
    report, out, teams, config = ray_run
    run = RunDir(out, readonly=True)
    merged, _ = run.read_tensors("merged/medusa/shared.safetensors")
    base = load_base(ModelSpec(source=config.model)).shared_state()
    deltas = [run.read_tensors(f"train/{t}.safetensors")[0] for t in ("alpha", "beta")]
    for name in base:  # no overlap between the two controlled teams
        both = (deltas[0][name] != 0) & (deltas[1][name] != 0)
        assert not bool(both.any())
    # the same seed in-process gives the same merged weights, bit for bit, with the same
    # thread count as a Ray actor (1 CPU): float reductions depend on the number of threads
    monkeypatch.setenv("MEDUSA_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    try:
        again = simulate(
            config.__class__(**{**config.__dict__, "out_dir": str(tmp_path / "in")}),
            teams,
            backend="inprocess",
        )
    finally:
        torch.set_num_threads(threads)
    merged2, _ = RunDir(tmp_path / "in", readonly=True).read_tensors(
        "merged/medusa/shared.safetensors"
    )
    for name in merged:
        assert torch.equal(merged[name], merged2[name]), name
    assert [t["metrics"]["merged"] for t in report["teams"]] == [
        t["metrics"]["merged"] for t in again["teams"]
    ]


def test_parse_teams_rejects_bad_lists():
    with pytest.raises(ConfigError, match="unique"):
        parse_teams("movie,movie")
    with pytest.raises(ConfigError, match="expected some of the teams"):
        parse_teams("movie,tweet", uncontrolled=["bbc"])
    with pytest.raises(ConfigError, match="2 to"):
        parse_teams("movie")
    teams = parse_teams("movie, legal=/data/l.csv", uncontrolled=["legal"])
    assert [(t.name, t.task, t.controlled) for t in teams] == [
        ("movie", "movie", True),
        ("legal", "/data/l.csv", False),
    ]


def test_cli_simulate_inprocess_prints_the_table(tiny_bert, tiny_tasks, tmp_path: Path):
    teams = ",".join(f"{n}={p}" for n, p in sorted(tiny_tasks.items()))
    result = CliRunner().invoke(
        app,
        [
            "simulate",
            "--teams",
            teams,
            "--model",
            str(tiny_bert),
            "--backend",
            "inprocess",
            "--compare",
            "task_arithmetic",
            "--max-train",
            "60",
            "--max-eval",
            "30",
            "--max-length",
            "16",
            "--epochs",
            "2",  # the default warm start: the probe's epoch + one more
            "--lr",
            "0.003",
            "--masked-lr-scale",
            "2",
            "--out",
            str(tmp_path / "r"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "task_arithmetic" in result.output and "average" in result.output
    assert (tmp_path / "r" / "report.json").is_file()
    stored = json.loads((tmp_path / "r" / "config.json").read_text())
    assert stored["run"]["masked-lr-scale"] == 2.0, stored["run"]


def test_cli_simulate_bad_config_exits_with_the_reason(tmp_path: Path):
    result = CliRunner().invoke(app, ["simulate", "--merge", "nope", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "unknown merge method 'nope'" in result.output
    result = CliRunner().invoke(app, ["simulate", "--masked-lr-scale", "0", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "masked-lr-scale must be > 0" in result.output


def test_missing_data_file_fails_before_anything_starts(tiny_bert, tiny_run_config, tmp_path):
    teams = parse_teams(f"alpha=movie,legal={tmp_path / 'missing.csv'}")
    with pytest.raises(ConfigError, match=r"team 'legal'.*found no file at .*missing.csv"):
        simulate(tiny_run_config(tiny_bert, tmp_path / "r"), teams, backend="inprocess")
    assert not (tmp_path / "r").exists()


def test_base_model_that_does_not_load_stops_the_run(tiny_tasks, tiny_run_config, tmp_path):
    from medusa_fed.errors import MedusaError

    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    teams = parse_teams(",".join(f"{n}={p}" for n, p in sorted(tiny_tasks.items())))
    with pytest.raises(MedusaError, match="broken-model"):
        simulate(tiny_run_config(broken, tmp_path / "r"), teams, backend="inprocess")


def test_the_console_script_ends_a_user_error_in_one_line(tmp_path: Path) -> None:
    """`medusa ...` as a user types it: a missing data file or an --out that is a file gives one
    line naming what was expected and found, exit code 2, no traceback."""
    import subprocess
    import sys

    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    missing = ["train", "--task", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "t")]
    onto_file = ["simulate", "--teams", "movie,tweet", "--backend", "inprocess", "--out"]
    cases = [(missing, "not found"), ([*onto_file, str(a_file)], "found a file")]
    for args, expected in cases:
        done = subprocess.run(
            [sys.executable, "-c", "from medusa_fed.cli import main; main()", *args],
            capture_output=True,
            text=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
            timeout=300,
        )
        errors = [x for x in done.stderr.splitlines() if x.startswith("error:")]
        assert done.returncode == 2, done.stderr[-2000:]
        assert len(errors) == 1 and expected in errors[0], done.stderr[-2000:]
        assert "Traceback" not in done.stderr
