"""A local multi-team Medusa run on Flower's simulation engine (Ray), or in-process without Ray.

Each virtual SuperNode is one team: node ``partition-id`` i runs the real ClientApp with the i-th
:class:`TeamConfig` (its own data, controlled or not); the real ServerApp runs the pipeline over
Flower's Grid. On a 2-core machine each ClientApp gets 1 CPU, so two teams train at a time. The
in-process backend runs the same pipeline over the same TeamSites, without Flower or Ray.

    from simulations.simulate import simulate, parse_teams
    report = simulate(RunConfig(...), parse_teams("movie,tweet,bbc", uncontrolled=()))
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from flwr.app import Context

from clients.team_site import TeamSite, show_progress
from medusa_fed.errors import ConfigError
from medusa_fed.pipeline import DirectTransport
from medusa_fed.run_config import RunConfig
from medusa_fed.rundir.run_dir import RunDir
from medusa_fed.team_config import TeamConfig

log = logging.getLogger(__name__)

Backend = Literal["ray", "inprocess"]
MAX_TEAMS = 16


def parse_teams(
    text: str, uncontrolled: Sequence[str] = (), max_train: int | None = None
) -> list[TeamConfig]:
    """Teams from ``"movie,tweet,legal=/data/legal.csv"``: a bundled task, or name=task/file.

    A team named in ``uncontrolled`` refuses masks (an uncontrolled branch).
    """
    teams: list[TeamConfig] = []
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        name, sep, task = item.partition("=")
        if not sep:
            name, task = item, item
        teams.append(
            TeamConfig(
                name=name.strip(),
                task=task.strip(),
                max_train=max_train,
                controlled=name.strip() not in set(uncontrolled),
            )
        )
    names = [t.name for t in teams]
    unknown = sorted(set(uncontrolled) - set(names))
    if unknown:
        raise ConfigError(f"--uncontrolled names {unknown}, expected some of the teams {names}")
    if len(set(names)) != len(names):
        raise ConfigError(f"team names must be unique, found {names}; use name=task to rename")
    if not 2 <= len(teams) <= MAX_TEAMS:
        raise ConfigError(f"a simulation needs 2 to {MAX_TEAMS} teams, found {len(teams)}: {names}")
    return teams


def preflight(teams: Sequence[TeamConfig]) -> None:
    """Fail before any process starts if a team's data cannot be found (names team and path)."""
    from medusa_fed.training.tasks import BUNDLED_TASKS, SUPPORTED_SUFFIXES, locate_package

    for team in teams:
        if team.task in BUNDLED_TASKS:
            locate_package(BUNDLED_TASKS[team.task])  # DataError with the install command
            continue
        path = Path(team.task)
        if not path.is_file():
            raise ConfigError(
                f"team {team.name!r}: expected a bundled task ({', '.join(sorted(BUNDLED_TASKS))}) "
                f"or a data file, found no file at {path}; fix the path in --teams"
            )
        if path.suffix.lower() not in SUPPORTED_SUFFIXES:
            raise ConfigError(
                f"team {team.name!r}: {path} is not one of "
                f"{', '.join(SUPPORTED_SUFFIXES)}; convert it or rename it"
            )


def _site_factory(teams: Sequence[TeamConfig]) -> Callable[[Context], TeamSite]:
    def site(context: Context) -> TeamSite:
        show_progress()
        pid = int(context.node_config["partition-id"])
        return TeamSite(teams[pid], context.state)

    return site


def inprocess_transport(teams: Sequence[TeamConfig]) -> DirectTransport:
    """One TeamSite per team in this process, node ids 1..n in ``teams`` order."""
    return DirectTransport({i + 1: TeamSite(team).handle for i, team in enumerate(teams)})


def simulate(
    config: RunConfig,
    teams: Sequence[TeamConfig],
    backend: Backend = "ray",
    cpus_per_team: float = 1.0,
) -> dict[str, Any]:
    """Run one Medusa run with ``teams`` as virtual SuperNodes; returns the written report.

    Parameters
    ----------
    config : RunConfig
        The coordinator's run configuration (``out_dir`` receives the run directory).
    teams : Sequence[TeamConfig]
        One virtual SuperNode per team, in this order.
    backend : "ray" | "inprocess" (default: "ray")
        Flower's simulation engine, or the in-process grid (same apps, no Ray; for tests).
    cpus_per_team : float (default: 1.0)
        Ray client resources per ClientApp (1 CPU suits a 2-core machine).
    """
    from clients.client_app import make_client_app
    from strategies.server_app import make_server_app

    if len(teams) < config.min_teams:
        raise ConfigError(
            f"{len(teams)} team(s) given, the run config needs min-teams = "
            f"{config.min_teams}; add teams or lower min-teams"
        )
    preflight(teams)
    client_app = make_client_app(_site_factory(list(teams)))
    log.info(
        "simulate: %d teams %s on %s, run directory %s",
        len(teams),
        [t.name + ("" if t.controlled else " (uncontrolled)") for t in teams],
        backend,
        config.out_dir,
    )
    if backend == "inprocess":
        from medusa_fed.pipeline import run_pipeline
        from medusa_fed.training import load_base
        from strategies.medusa_strategy import model_spec

        outcome = run_pipeline(config, load_base(model_spec(config)), inprocess_transport(teams))
        return outcome.report()

    from flwr.simulation import run_simulation

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    errors: list[BaseException] = []
    run_simulation(
        server_app=make_server_app(config, errors),
        client_app=client_app,
        num_supernodes=len(teams),
        backend_config={
            "client_resources": {"num_cpus": cpus_per_team, "num_gpus": 0.0},
            "init_args": {
                "num_cpus": max(1, os.cpu_count() or 1),
                "include_dashboard": False,
                "logging_level": "warning",
                "log_to_driver": True,
            },
        },
    )
    if errors:
        raise errors[0]
    run_dir = RunDir(Path(config.out_dir), readonly=True)
    if not run_dir.exists("report.json"):
        raise ConfigError(
            f"the simulation ended without a report in {config.out_dir}; "
            "see the log above for the stage that failed"
        )
    return dict(run_dir.read_json("report.json"))
