"""End to end on Flower's simulation engine (Ray): the real ServerApp and ClientApp on a tiny BERT.

``simulate(backend="ray")`` (what ``medusa simulate`` runs) sends the app with ``flwr run`` to a
local simulation SuperLink. One such run is shared by the assertions (Flower's and Ray's start-up
dominate a tiny run's time); the in-process backend, and Flower's own ``flwr run`` typed as a
user would with the same run config, must give the same merged models for the same seed.
"""

from __future__ import annotations

import json
import os
import subprocess
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


def test_flwr_run_of_the_app_gives_the_same_merged_models(ray_run, tmp_path):
    """A Flower user's run: a connection to a local simulation SuperLink in their own
    $FLWR_HOME/config.toml, then `flwr run deploy/app <connection> --run-config ...
    --federation-config "num-supernodes=3 client-resources-num-cpus=1" --stream`; every merged
    model (Medusa's and TIES's) is the one `medusa simulate` wrote, bit for bit. The CPUs per
    SuperNode must match (medusa simulate gives each 1): Ray sets a ClientApp's torch threads
    from them, and float sums depend on the thread count. (40-70 s on 2 cores: Flower's and
    Ray's start-up.)"""
    from simulations.flower_run import APP_DIR, child_env, flower_bin, local_superlink

    _, out, teams, config = ray_run
    mine = tmp_path / "flwr-run"
    home = tmp_path / "flwr-home"
    env = child_env(home, tmp_path / "progress.jsonl")
    values = {
        **config.to_mapping(),
        "out-dir": str(mine),
        "teams": ",".join(f"{t.name}={t.task}" for t in teams),
        "uncontrolled": "gamma",
    }
    run_config = " ".join(
        f"{k}={json.dumps(v) if isinstance(v, str) else str(v).lower()}" for k, v in values.items()
    )
    with (
        open(tmp_path / "log.txt", "ab") as log,
        local_superlink(tmp_path, env, log, deadline_s=600) as port,
    ):
        home.mkdir(parents=True, exist_ok=True)
        (home / "config.toml").write_text(
            '[superlink]\ndefault = "local-sim"\n\n[superlink.local-sim]\n'
            f'address = "127.0.0.1:{port}"\ninsecure = true\n'
        )
        done = subprocess.run(
            [flower_bin("flwr"), "run", str(APP_DIR), "local-sim", "--stream",
             "--run-config", run_config,
             "--federation-config", "num-supernodes=3 client-resources-num-cpus=1"],
            env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "DEPRECATED" not in done.stdout + done.stderr
    for method in ("medusa", "ties"):
        a, _ = RunDir(out, readonly=True).read_tensors(f"merged/{method}/shared.safetensors")
        b, _ = RunDir(mine, readonly=True).read_tensors(f"merged/{method}/shared.safetensors")
        assert sorted(a) == sorted(b)
        for name in a:
            assert torch.equal(a[name], b[name]), (method, name)


def test_simulation_reports_progress_and_logs_to_the_run_directory(ray_run):
    """The Flower processes' progress events reached the run's progress file (every stage
    started and finished, training steps from the team sites), and their log is in log.txt."""
    from medusa_fed.progress import read_new

    _, out, _, _ = ray_run
    events, _ = read_new(str(out / "flwr" / "progress.jsonl"), 0)
    done = [e["stage"] for e in events if e["kind"] == "stage" and e["state"] == "done"]
    assert done[:2] == ["hello", "probe"] and done[-1] == "export", done
    steps = [e for e in events if e["kind"] == "step"]
    assert {e["what"].split()[-1] for e in steps} == {"alpha", "beta", "gamma"}
    assert len({e["pid"] for e in steps} - {e["pid"] for e in events if e["kind"] == "stage"}) >= 1
    assert [e["state"] for e in events if e["kind"] == "run"] == ["done"]
    log = (out / "log.txt").read_text()
    assert "probe alpha: step 1/" in log and "Successfully started run" in log
    assert "DEPRECATED" not in log


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
    # not a terminal: one line per finished stage, no log lines; the detail is in log.txt
    lines = result.output.splitlines()
    finished = [x.split()[0] for x in lines if " done in " in x]
    assert finished[:2] == ["hello", "probe"] and finished[-1] == "export", result.output
    assert not [x for x in lines if " INFO " in x or "step " in x], result.output
    log = (tmp_path / "r" / "log.txt").read_text()
    assert "train-round1 alpha: step 1/" in log and "eval: start" not in result.output
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


def test_a_virtual_supernode_plays_the_partition_ids_team_of_the_run_config(tmp_path):
    from medusa_fed.team_config import simulated_team
    from simulations.simulate import team_run_config
    from strategies.server_app import coordinator_config

    run = {"teams": "movie,legal=/data/l.csv", "uncontrolled": "legal", "seed": 3}
    team = simulated_team({"partition-id": 1, "num-partitions": 2}, run)
    assert (team.name, team.task, team.controlled) == ("legal", "/data/l.csv", False)
    assert simulated_team({"partition-id": 0}, run).controlled is True
    with pytest.raises(ConfigError, match="partition-id 2 has no team.*num-supernodes = 2"):
        simulated_team({"partition-id": 2}, run)
    with pytest.raises(ConfigError, match="names no teams"):
        simulated_team({"partition-id": 0}, {"seed": 3})
    assert coordinator_config(run).seed == 3  # the team keys are not the coordinator's
    data = tmp_path / "l.csv"
    keys = team_run_config(parse_teams(f"movie,legal={data}", uncontrolled=["legal"]))
    assert keys == {"teams": f"movie=movie,legal={data}", "uncontrolled": "legal"}
    with pytest.raises(ConfigError, match="carries only the name"):
        team_run_config(parse_teams("movie,tweet", max_train=10))
