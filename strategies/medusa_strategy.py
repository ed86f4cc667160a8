"""MedusaStrategy: the coordinator's side of one Medusa run on a Flower Grid.

The stages themselves live once in :mod:`medusa_fed.pipeline` (Flower-free); this class only
hands the pipeline a Transport over the Grid it is given, as Flower's strategies hand their
aggregation to plain functions.
"""

from __future__ import annotations

from pathlib import Path

from flwr.serverapp import Grid

from medusa_fed.pipeline import RunOutcome
from medusa_fed.pipeline.run import run_stages
from medusa_fed.pipeline.state import RunState
from medusa_fed.run_config import RunConfig
from medusa_fed.rundir import RunDir
from medusa_fed.training.config import ModelSpec
from medusa_fed.training.models import BaseModel

from .grid_transport import GridTransport


class MedusaStrategy:
    """Drives one Medusa run over a Flower Grid.

    Parameters
    ----------
    config : RunConfig
        The validated run configuration.
    base : BaseModel
        The base model loaded at the coordinator: its shared state is what ownership covers.
    run_dir : RunDir | None (default: RunDir(config.out_dir))
        Where every stage's inputs and outputs are stored.
    """

    def __init__(self, config: RunConfig, base: BaseModel, run_dir: RunDir | None = None) -> None:
        self.state = RunState(config, base, run_dir or RunDir(Path(config.out_dir)))

    def run(self, grid: Grid) -> RunOutcome:
        """Run every stage over ``grid``; the report is written to the run directory and
        ``self.state`` keeps what each stage produced."""
        return run_stages(self.state, GridTransport(grid))


def model_spec(config: RunConfig) -> ModelSpec:
    """The ModelSpec every site builds for this run (the coordinator's own base included)."""
    return ModelSpec(source=config.model, family=config.model_family, method=config.method)


__all__ = ["MedusaStrategy", "model_spec"]
