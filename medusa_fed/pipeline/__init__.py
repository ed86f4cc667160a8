"""The Medusa pipeline: every stage of a run as a function over plain data and a Transport.

No Flower here: ``strategies/`` adapts a Flower Grid to :class:`Transport`; the in-process
simulation and the benchmark use :class:`DirectTransport` (the benchmark adds a cache of trained
branches under it). :func:`run_pipeline` is the one stage loop all of them run.
"""

from medusa_fed.pipeline.outcome import RunOutcome, TeamOutcome
from medusa_fed.pipeline.run import run_pipeline
from medusa_fed.pipeline.transport import DirectTransport, Failure, Transport

__all__ = ["DirectTransport", "Failure", "RunOutcome", "TeamOutcome", "Transport", "run_pipeline"]
