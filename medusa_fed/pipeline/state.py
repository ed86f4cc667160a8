"""What the coordinator holds during one run, and the one way a stage talks to the teams.

:class:`RunState` is plain data (the run's config, the base's shared tensors, who is in the run,
what each stage produced); the stage functions in this package read and extend it. :func:`send`
is the only place requests leave and replies are sorted into kept / rejected: error replies,
replies from unknown nodes, duplicates and silence are logged and dropped, never raised, and the
reason is kept in the run directory for the report (as Flower's own strategies do).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from medusa_fed import codec
from medusa_fed.deltas import StateDict
from medusa_fed.errors import ConfigError, PayloadError
from medusa_fed.ownership import OwnershipMap
from medusa_fed.pipeline.transport import Failure, Transport
from medusa_fed.protocol import HelloReply, Reply, Request, Sender, Settings
from medusa_fed.run_config import RunConfig
from medusa_fed.rundir import RunDir
from medusa_fed.training.models import BaseModel

log = logging.getLogger(__name__)

R = TypeVar("R", bound=Reply)


@dataclass
class Branches:
    """What the teams delivered in one training stage: dense fp32 deltas of the shared space,
    their heads and their metrics, by team."""

    deltas: dict[str, StateDict] = field(default_factory=dict)
    heads: dict[str, StateDict] = field(default_factory=dict)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass
class Roster:
    """Which node is which team, what each said in HELLO, and who was left out and why."""

    node_of: dict[str, int] = field(default_factory=dict)  # team -> node id (uint64 as int)
    hello: dict[str, HelloReply] = field(default_factory=dict)
    left_out: dict[str, str] = field(default_factory=dict)  # team -> "stage: reason"

    @property
    def active(self) -> list[str]:
        """Teams still in the run, sorted by name (the order every stage uses)."""
        return sorted(t for t in self.node_of if t not in self.left_out)

    def team_of(self, node_id: int) -> str | None:
        for team, nid in self.node_of.items():
            if nid == node_id:
                return team
        return None

    def drop(self, team: str, stage: str, reason: str) -> None:
        if team in self.left_out:
            return
        self.left_out[team] = f"{stage}: {reason}"
        log.warning("%s: team %r left out: %s", stage, team, reason)

    def controlled(self, team: str) -> bool:
        return self.hello[team].controlled


@dataclass
class RunState:
    """One run at the coordinator: its inputs and everything the stages have produced so far."""

    config: RunConfig
    base: BaseModel
    run_dir: RunDir
    base_state: StateDict = field(init=False)
    shapes: dict[str, tuple[int, ...]] = field(init=False)
    fingerprint: str = field(init=False)
    roster: Roster = field(default_factory=Roster)
    ownership: OwnershipMap | None = None
    masked: Branches = field(default_factory=Branches)  # TRAIN: Medusa's branches
    free: Branches = field(default_factory=Branches)  # FREE: the post-hoc merges' branches
    fed: dict[str, Branches] = field(default_factory=dict)  # federated anchor -> last round
    merged: dict[str, StateDict] = field(default_factory=dict)  # method label -> shared weights
    merge_stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    chosen: dict[str, dict[str, float]] = field(default_factory=dict)  # label -> settings used
    validation: dict[str, float] = field(default_factory=dict)  # label -> mean val. accuracy
    eval_metrics: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    bytes: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)
    # (team, method label) -> fingerprint of the merge the team scored last for that method
    held: dict[tuple[str, str], str] = field(default_factory=dict)
    forgetful: set[str] = field(default_factory=set)  # teams whose sites did not keep a merge
    timings: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.base_state = self.base.shared_state()
        self.shapes = {name: tuple(t.shape) for name, t in self.base_state.items()}
        self.fingerprint = self.base.fingerprint()

    @property
    def max_payload_bytes(self) -> int:
        """No honest payload is larger than twice a dense fp32 copy of the shared space."""
        return 2 * codec.dense_fp32_nbytes(self.shapes)

    def settings(self, epochs: float | None = None, max_steps: int | None = None) -> Settings:
        """The run settings every request carries, with this request's budget."""
        return settings_of(self.config, epochs, max_steps)

    def check_sender(self, team: str, sender: Sender) -> None:
        """A payload must name the team it came from and the run's base."""
        if sender.team != team:
            raise PayloadError(
                f"reply names team {sender.team!r}, expected {team!r} (the team registered for "
                "this node); payload rejected"
            )
        if sender.fingerprint != self.fingerprint:
            raise PayloadError(
                f"payload was made from base {sender.fingerprint[:12]}..., expected the run's "
                f"base {self.fingerprint[:12]}...; payload rejected, other teams unaffected"
            )

    # ---------------------------------------------------------------- bookkeeping
    def usable(self, stage: str) -> list[str]:
        """The active teams; ConfigError when fewer than ``min-teams`` are left."""
        teams = self.roster.active
        if len(teams) < self.config.min_teams:
            raise ConfigError(
                f"{stage}: {len(teams)} team(s) left ({', '.join(teams) or 'none'}), the run needs "
                f"min-teams = {self.config.min_teams}; left out: "
                f"{ {t: r.splitlines()[0] for t, r in self.roster.left_out.items()} }. Stored "
                f"payloads are kept in {self.run_dir.path}"
            )
        return teams

    def reject(self, team: str, stage: str, reason: str) -> None:
        self.run_dir.record_rejection(team, stage, reason)

    def drop(self, team: str, stage: str, reason: str) -> None:
        self.reject(team, stage, reason)
        self.roster.drop(team, stage, reason)

    def count(self, team: str, stage: str, sent: int, received: int) -> None:
        self.bytes.setdefault(team, {})[stage] = {
            "sent": sent,
            "received": received,
            "dense_fp32": codec.dense_fp32_nbytes(self.shapes),
        }

    def stored(self, team: str, stage: str, relpath: str) -> bool:
        """Whether ``relpath`` is stored intact. A file that fails its hash check is removed
        (and the team asked again), never used."""
        if not self.run_dir.exists(relpath):
            return False
        if self.run_dir.exists(relpath, verify=True):
            return True
        self.discard(team, stage, relpath, "failed its sha256 check")
        return False

    def discard(self, team: str, stage: str, relpath: str, why: str) -> None:
        """Remove a stored file that cannot be used (the team is asked again), with the reason."""
        reason = f"stored {relpath} {why}; removed, the team is asked again"
        log.warning("%s: %s", stage, reason)
        self.reject(team, stage, reason)
        self.run_dir.remove(relpath)


def send(
    state: RunState,
    transport: Transport,
    stage: str,
    build: Callable[[str], Request],
    expect: type[R],
    teams: list[str] | None = None,
    fallback: Callable[[str], Request] | None = None,
) -> dict[str, R]:
    """Send each team its own request (``build(team)``) and return the good replies by team,
    in arrival order. Everything else is rejected with its reason (and the team dropped, except
    for a duplicate, where the first reply is kept). A team whose site lacks what a light
    request relied on (a ``resend`` failure) is sent ``fallback(team)`` (the full payload) once."""
    roster = state.roster
    targets = roster.active if teams is None else teams
    started = time.monotonic()
    timeout = state.config.stage_timeout_s
    got: dict[str, R] = {}
    resend = _exchange(state, transport, stage, {t: build(t) for t in targets}, expect, got)
    if resend and fallback is not None:
        log.info("%s: %d team(s) lack the state to rebuild: full payload sent", stage, len(resend))
        _exchange(state, transport, stage, {t: fallback(t) for t in resend}, expect, got)
    else:
        for team, reason in resend.items():
            state.drop(team, stage, reason)
    for team in targets:
        if team not in got and team not in roster.left_out:
            state.drop(team, stage, f"no reply within {timeout:.0f} s")
    log.info(
        "%s: %d/%d team(s) answered in %.1f s",
        stage,
        len(got),
        len(targets),
        time.monotonic() - started,
    )
    return got


def settings_of(
    c: RunConfig, epochs: float | None = None, max_steps: int | None = None
) -> Settings:
    """The settings a request of run ``c`` carries, with a budget (default: the run's)."""
    return Settings(
        model=c.model,
        model_family=c.model_family,
        method=c.method,
        epochs=c.epochs if epochs is None else epochs,
        max_steps=c.max_steps if max_steps is None else max_steps,
        lr=c.lr,
        batch_size=c.batch_size,
        max_length=c.max_length,
        max_train=c.max_train,
        max_eval=c.max_eval,
        seed=c.seed,
        eval_before=c.eval_before,
        dp_clip=c.dp_clip,
        dp_noise=c.dp_noise,
        class_balance=c.class_balance,
    )


def _exchange(
    state: RunState,
    transport: Transport,
    stage: str,
    requests: Mapping[str, Request],
    expect: type[R],
    got: dict[str, R],
) -> dict[str, str]:
    """One exchange of :func:`send`: good replies go into ``got``; returns the teams that asked
    for the full payload (``resend`` failures), with their reasons."""
    roster = state.roster
    timeout = state.config.stage_timeout_s
    log.info("%s: sent %d request(s), waiting up to %.0f s", stage, len(requests), timeout)
    by_node = {roster.node_of[t]: r for t, r in requests.items()}
    resend: dict[str, str] = {}
    for node, reply in transport.exchange(stage, by_node, timeout):
        team = roster.team_of(node)
        if team is None or team not in requests:
            log.warning("%s: reply from unexpected node %s dropped", stage, node)
        elif team in got or team in resend:
            state.reject(team, stage, "duplicated reply (the first one is kept)")
            log.warning("%s: team %r: duplicated reply (the first one is kept)", stage, team)
        elif isinstance(reply, Failure) and reply.resend:
            resend[team] = reply.reason
        elif isinstance(reply, Failure):
            state.drop(team, stage, reply.reason)
        elif not isinstance(reply, expect):
            state.drop(team, stage, f"expected a {expect.__name__}, found a {type(reply).__name__}")
        else:
            got[team] = reply
    return resend
