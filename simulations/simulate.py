"""A local multi-team Medusa run on Flower's simulation engine, or in-process without Flower.

The Flower backend is what a Flower user types: this module starts a simulation SuperLink of its
own (loopback, a free port, a private ``FLWR_HOME`` under the run directory, bounded, stopped by
its pid) and launches the app ``deploy/app`` on it with ``flwr run``. Each virtual SuperNode is
one team: node ``partition-id`` i runs the real ClientApp as the i-th team of the run config's
``teams`` (its own data, controlled or not); the real ServerApp runs the pipeline over Flower's
Grid. On a 2-core machine each ClientApp gets 1 CPU, so two teams train at a time. The in-process
backend runs the same pipeline over the same TeamSites, without Flower or Ray.

Everything the Flower processes print goes to the run directory's ``log.txt``; their progress
events (``medusa_fed.progress``) come back through ``flwr/progress.jsonl`` to ``on_event``.

    from simulations.simulate import simulate, parse_teams
    report = simulate(RunConfig(...), parse_teams("movie,tweet,bbc", uncontrolled=()))
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from clients.team_site import TeamSite
from medusa_fed import progress
from medusa_fed.errors import ConfigError
from medusa_fed.pipeline import DirectTransport
from medusa_fed.run_config import RunConfig
from medusa_fed.rundir.run_dir import RunDir
from medusa_fed.team_config import TeamConfig, parse_teams

log = logging.getLogger(__name__)

__all__ = ["parse_teams", "preflight", "simulate", "inprocess_transport"]

Backend = Literal["ray", "inprocess"]


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


def inprocess_transport(teams: Sequence[TeamConfig]) -> DirectTransport:
    """One TeamSite per team in this process, node ids 1..n in ``teams`` order."""
    return DirectTransport({i + 1: TeamSite(team).handle for i, team in enumerate(teams)})


def simulate(
    config: RunConfig,
    teams: Sequence[TeamConfig],
    backend: Backend = "ray",
    cpus_per_team: int = 1,
    on_event: progress.Reporter | None = None,
    log_file: Path | None = None,
    echo: bool = False,
) -> dict[str, Any]:
    """Run one Medusa run with ``teams`` as virtual SuperNodes; returns the written report.

    Parameters
    ----------
    config : RunConfig
        The coordinator's run configuration (``out_dir`` receives the run directory).
    teams : Sequence[TeamConfig]
        One virtual SuperNode per team, in this order.
    backend : "ray" | "inprocess" (default: "ray")
        Flower's simulation engine (Ray) through ``flwr run`` on a local simulation SuperLink,
        or the pipeline over in-process team sites (no Flower, no Ray; for tests).
    cpus_per_team : int (default: 1)
        Ray client resources per ClientApp (1 CPU suits a 2-core machine).
    on_event : callable | None (default: None)
        Receives every progress event of the run (``medusa_fed.progress``), from any process.
    log_file : Path | None (default: ``<out_dir>/log.txt``)
        Where the Flower processes' output goes (ray backend).
    echo : bool (default: False)
        Also copy the Flower run's log to stderr (ray backend; ``medusa -v simulate``).
    """
    if len(teams) < config.min_teams:
        raise ConfigError(
            f"{len(teams)} team(s) given, the run config needs min-teams = "
            f"{config.min_teams}; add teams or lower min-teams"
        )
    preflight(teams)
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

        previous = progress.use(on_event) if on_event is not None else None
        try:
            base = load_base(model_spec(config))
            outcome = run_pipeline(config, base, inprocess_transport(teams))
        finally:
            if on_event is not None:
                progress.use(previous)
        return outcome.report()

    from simulations.flower_run import run_app

    out = Path(config.out_dir).resolve()
    log_file = log_file or out / "log.txt"
    ended: list[progress.Event] = []

    def relay(event: progress.Event) -> None:
        if event.get("kind") == "run":
            ended.append(event)
        if on_event is not None:
            on_event(event)

    run_app(
        run_config={
            **config.to_mapping(),
            **absolute_paths(config),
            **team_run_config(teams),
        },
        num_supernodes=len(teams),
        cpus_per_team=cpus_per_team,
        root=out / "flwr",
        log_file=log_file,
        on_event=relay,
        deadline_s=deadline_s(config),
        echo=echo,
    )
    failed = [e for e in ended if e.get("state") == "failed"]
    if failed:
        raise ConfigError(f"the run stopped: {failed[-1].get('error')} (whole log: {log_file})")
    run_dir = RunDir(out, readonly=True)
    if not run_dir.exists("report.json"):
        raise ConfigError(
            f"the simulation ended without a report in {config.out_dir}; "
            f"see {log_file} for the stage that failed"
        )
    return dict(run_dir.read_json("report.json"))


def absolute_paths(config: RunConfig) -> dict[str, str]:
    """The run config's paths made absolute: the Flower processes run in the run directory's
    ``flwr/`` folder, not here (out-dir; a local model directory; the history store, whose
    default ``./runs/.medusa-store`` is where ``medusa log`` run from here reads)."""
    from medusa_fed.history.importer import store_path_for

    paths = {"out-dir": str(Path(config.out_dir).resolve())}
    if Path(config.model).exists():
        paths["model"] = str(Path(config.model).resolve())
    store = store_path_for(config.store)
    paths["store"] = "off" if store is None else str(Path(store).resolve())
    return paths


def deadline_s(config: RunConfig) -> float:
    """A bound on the whole Flower run: every stage at its timeout, plus start-up."""
    return config.stage_timeout_s * 12 + 600.0


def data_path(task: str) -> str:
    """A bundled task's name as it is; a data file's path made absolute (the ClientApps run
    elsewhere)."""
    from medusa_fed.training.tasks import BUNDLED_TASKS

    return task if task in BUNDLED_TASKS else str(Path(task).resolve())


def team_run_config(teams: Sequence[TeamConfig]) -> dict[str, str]:
    """The run-config keys that tell a simulation's virtual SuperNodes which team they play
    (``teams``, ``uncontrolled``); a team setting those keys cannot carry is refused."""
    for team in teams:
        plain = TeamConfig(name=team.name, task=team.task, controlled=team.controlled)
        if team != plain:
            raise ConfigError(
                f"team {team.name!r}: a simulation's run config carries only the name, the data "
                "and whether the team is controlled; found other settings (text-columns, "
                "label-column, max-train, share-head): use --backend inprocess, or a deployment"
            )
        if "," in team.task:
            raise ConfigError(
                f"team {team.name!r}: its data path {team.task!r} contains a ','; rename the "
                "file, or use --backend inprocess"
            )
    return {
        "teams": ",".join(f"{t.name}={data_path(t.task)}" for t in teams),
        "uncontrolled": ",".join(t.name for t in teams if not t.controlled),
    }


def add_budget_arguments(parser: argparse.ArgumentParser, max_train: int, max_eval: int) -> None:
    """The run a micro-benchmark makes (model, teams, budget, seed) as command-line options;
    :func:`budget_settings` turns them into run-config keys."""
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--teams", default="movie,tweet,bbc")
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--probe-epochs", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-train", type=int, default=max_train)
    parser.add_argument("--max-eval", type=int, default=max_eval)
    parser.add_argument("--max-length", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)


def budget_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The run-config keys of :func:`add_budget_arguments`' options (no head re-fit, no floor,
    nothing stored: a benchmark measures one thing)."""
    return {
        "model": args.model,
        "epochs": args.epochs,
        "probe-epochs": args.probe_epochs,
        "rounds": args.rounds,
        "max-train": args.max_train,
        "max-eval": args.max_eval,
        "max-length": args.max_length,
        "batch-size": args.batch_size,
        "lr": args.lr,
        "refit-epochs": 0,
        "eval-before": False,
        "seed": args.seed,
        "store": "off",
    }
