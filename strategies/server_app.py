"""The coordinator as a Flower ServerApp: validates the run config, loads the base, runs Medusa.

``flwr run`` with this app (``[tool.flwr.app.components] serverapp``), on a deployment's SuperLink
or a local simulation one (``medusa simulate``), reads ``[tool.flwr.app.config]`` with the
run's ``--run-config`` overrides; tests may pass a RunConfig directly.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from medusa_fed import progress
from medusa_fed.report import render_table
from medusa_fed.run_config import RunConfig
from medusa_fed.team_config import SIMULATION_KEYS
from medusa_fed.training import load_base

from .medusa_strategy import MedusaStrategy, model_spec

log = logging.getLogger(__name__)


def make_server_app(
    config: RunConfig | None = None, errors: list[BaseException] | None = None
) -> ServerApp:
    """A ServerApp for ``config``, or for the run config Flower hands it when ``None``.

    ``errors`` (if given) receives the exception that stopped the run, so a caller that runs the
    app inside Flower's simulation (which logs and swallows it) can raise it again.
    """
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        _log_stages()
        progress.relay_warnings()
        try:
            cfg = config if config is not None else coordinator_config(context.run_config)
            base = load_base(model_spec(cfg))
            outcome = MedusaStrategy(cfg, base).run(grid)
        except BaseException as exc:
            log.error("run stopped: %s: %s", type(exc).__name__, exc)
            progress.emit("run", state="failed", error=f"{type(exc).__name__}: {exc}")
            if errors is not None:
                errors.append(exc)
            raise
        log.info("report written to %s\n%s", cfg.out_dir, render_table(outcome.report()))
        progress.emit("run", state="done", out_dir=cfg.out_dir)

    return app


def coordinator_config(run_config: Mapping[str, Any]) -> RunConfig:
    """The coordinator's RunConfig from Flower's run config, less the keys only a simulation's
    virtual SuperNodes read (which teams they play)."""
    return RunConfig.from_mapping({k: v for k, v in run_config.items() if k not in SIMULATION_KEYS})


def _log_stages() -> None:
    """Under ``flwr-serverapp`` (deployment) nothing sets up logging, so the stage lines would be
    dropped: send medusa's INFO lines to stderr, which Flower forwards to ``flwr log``."""
    medusa = logging.getLogger("medusa_fed")
    if logging.getLogger().handlers or medusa.handlers:
        return  # the CLI or a test harness already logs
    handler = logging.StreamHandler()
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    )
    medusa.addHandler(handler)
    medusa.setLevel(logging.INFO)


app = make_server_app()
