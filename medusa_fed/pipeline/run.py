"""The stage loop, written once: the coordinator (Flower), the in-process simulation and the
benchmark all call :func:`run_pipeline`, each with its own Transport."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from medusa_fed import progress
from medusa_fed.errors import ConfigError
from medusa_fed.pipeline.evaluate import evaluate, merge_and_choose
from medusa_fed.pipeline.export import export
from medusa_fed.pipeline.federated import federated
from medusa_fed.pipeline.hello import hello
from medusa_fed.pipeline.outcome import RunOutcome
from medusa_fed.pipeline.probe import assign, probe
from medusa_fed.pipeline.state import RunState
from medusa_fed.pipeline.train import train, train_free
from medusa_fed.pipeline.transport import Transport
from medusa_fed.report import write_report
from medusa_fed.run_config import RunConfig
from medusa_fed.rundir import RunDir
from medusa_fed.training.models import BaseModel

log = logging.getLogger(__name__)


def run_pipeline(
    config: RunConfig,
    base: BaseModel,
    transport: Transport,
    run_dir: RunDir | None = None,
    *,
    history: bool = True,
) -> RunOutcome:
    """Run every stage of one Medusa run over ``transport``; write the report and return the
    outcome. Stages whose outputs are stored in the run directory are not redone.

    Parameters
    ----------
    config : RunConfig
        The validated run configuration.
    base : BaseModel
        The base model at the coordinator: its shared state is what ownership covers.
    transport : Transport
        How requests reach the teams (Flower Grid, or in-process).
    run_dir : RunDir | None (default: RunDir(config.out_dir))
    history : bool (default: True)
        Import the finished run into the branch history (``config.store``; ``medusa log``).
    """
    state = RunState(config, base, run_dir or RunDir(Path(config.out_dir)))
    return run_stages(state, transport, history=history)


def run_stages(state: RunState, transport: Transport, *, history: bool = True) -> RunOutcome:
    """The stage loop over an already built :class:`RunState` (its fields stay readable after)."""
    config = state.config
    state.base.check_length(config.max_length)
    bind_config(state)
    state.run_dir.write_json(
        "config.json", {"run": config.to_mapping(), "fingerprint": state.fingerprint}
    )
    stage(state, "hello", lambda: hello(state, transport))
    if config.uses_ownership:
        stage(state, "probe", lambda: probe(state, transport))
        stage(state, "assign", lambda: assign(state))
        stage(state, "train", lambda: train(state, transport))
    if config.needs_free_branches:
        stage(state, "baseline", lambda: train_free(state, transport))
    stage(state, "merge", lambda: merge_and_choose(state, transport))
    if config.federated:
        stage(state, "federated", lambda: federated(state, transport))
    stage(state, "eval", lambda: evaluate(state, transport))
    stage(state, "export", lambda: export(state))
    outcome = RunOutcome.of(state)
    write_report(outcome.report(), state.run_dir)
    if history:
        from medusa_fed.history.importer import import_after_run

        import_after_run(state.run_dir, config.store)
    return outcome


# Keys that change nothing already stored: where the run writes, how long it waits, how many teams
# it needs, which methods it also compares (each is stored under its own label), which node id is
# which team (node ids change when SuperNodes register again), how starts and merges travel
# (downlink alone changes no result: a downlink-dtype other than fp32 needs "lacking", and a changed
# downlink-dtype is refused).
RESTART_FREE = frozenset(
    {
        "out-dir",
        "store",
        "stage-timeout-s",
        "min-teams",
        "compare",
        "federated",
        "team-nodes",
        "downlink",
    }
)


def bind_config(state: RunState) -> None:
    """A run directory belongs to one configuration: a restart whose settings would change what
    is already stored is refused, naming the keys that differ (nothing is redone silently)."""
    if not state.run_dir.exists("config.json"):
        return
    stored = state.run_dir.read_json("config.json")
    old, new = stored.get("run", {}), state.config.to_mapping()
    differ = sorted(k for k in new if k not in RESTART_FREE and old.get(k, new[k]) != new[k])
    if stored.get("fingerprint") not in (None, state.fingerprint):
        differ.insert(0, "base model (fingerprint)")
    if differ:
        changes = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in differ[:6])
        raise ConfigError(
            f"run directory {state.run_dir.path} holds a run with other settings ({changes}); "
            "expected the same settings to resume it. Use a new --out (or out-dir) for a new run"
        )


def stage(state: RunState, name: str, fn: Callable[[], None]) -> None:
    """Run one stage, timed, logged and reported (progress events: start, then done with its
    time and the bytes it moved)."""
    started = time.monotonic()
    before = _bytes_moved(state)
    log.info("%s: start", name)
    progress.emit("stage", stage=name, state="start", teams=list(state.roster.active))
    fn()
    state.timings[name] = round(time.monotonic() - started, 2)
    sent, received = (now - then for now, then in zip(_bytes_moved(state), before, strict=True))
    log.info("%s: done in %.1f s", name, state.timings[name])
    progress.emit(
        "stage",
        stage=name,
        state="done",
        seconds=state.timings[name],
        sent=sent,
        received=received,
    )


def _bytes_moved(state: RunState) -> tuple[int, int]:
    """Payload bytes sent to and received from the teams so far (every stage, every team)."""
    sent = received = 0
    for stages in state.bytes.values():
        for counts in stages.values():
            sent += counts["sent"]
            received += counts["received"]
    return sent, received
