"""Sending one stage's requests to the teams and collecting what comes back.

A failed or late reply is logged and dropped, never raised (as Flower's own strategies do): the
stage goes on with the teams that answered, and the reason is kept for the report.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from medusa_fed.protocol import CONFIG_KEY

log = logging.getLogger(__name__)


@dataclass
class Roster:
    """Which Flower node is which team, and who has been left out of the run and why."""

    node_of: dict[str, int] = field(
        default_factory=dict
    )  # team name -> node id (uint64: Python int)
    info: dict[str, dict] = field(default_factory=dict)  # team name -> its HELLO facts
    left_out: dict[str, str] = field(default_factory=dict)  # team name -> reason

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
        return bool(self.info[team]["controlled"])


def exchange(
    grid: Grid,
    roster: Roster,
    stage: str,
    message_type: str,
    build: Callable[[str], RecordDict],
    timeout_s: float,
    teams: list[str] | None = None,
    on_rejection: Callable[[str, str, str], None] | None = None,
) -> dict[str, Message]:
    """Send each team its own request (``build(team)``) and return the good replies by team.

    Each team gets a freshly built RecordDict (never one shared mutable record). Error replies,
    replies from unknown nodes, duplicates and teams that do not answer within ``timeout_s`` are
    dropped with a reason passed to ``on_rejection(team, stage, reason)``.
    """
    targets = roster.active if teams is None else teams
    messages = [
        Message(
            build(team), dst_node_id=roster.node_of[team], message_type=message_type, group_id=stage
        )
        for team in targets
    ]
    started = time.monotonic()
    log.info("%s: sent %d request(s), waiting up to %.0f s", stage, len(messages), timeout_s)
    replies = list(grid.send_and_receive(messages, timeout=timeout_s))
    got: dict[str, Message] = {}
    for reply in replies:
        team = roster.team_of(reply.metadata.src_node_id)
        if team is None or team not in targets:
            log.warning(
                "%s: reply from unexpected node %s dropped", stage, reply.metadata.src_node_id
            )
            continue
        if team in got:
            _reject(
                roster,
                on_rejection,
                team,
                stage,
                "duplicated reply (the first one is kept)",
                drop=False,
            )
            continue
        if reply.has_error():
            _reject(roster, on_rejection, team, stage, f"error reply: {reply.error.reason}")
            continue
        got[team] = reply
    for team in targets:
        if team not in got and team not in roster.left_out:
            _reject(roster, on_rejection, team, stage, f"no reply within {timeout_s:.0f} s")
    log.info(
        "%s: %d/%d team(s) answered in %.1f s",
        stage,
        len(got),
        len(targets),
        time.monotonic() - started,
    )
    return got


def _reject(
    roster: Roster,
    on_rejection: Callable[[str, str, str], None] | None,
    team: str,
    stage: str,
    reason: str,
    drop: bool = True,
) -> None:
    if on_rejection is not None:
        on_rejection(team, stage, reason)
    if drop:
        roster.drop(team, stage, reason)
    else:
        log.warning("%s: team %r: %s", stage, team, reason)


def config_record(values: Mapping[str, object]) -> ConfigRecord:
    """A ConfigRecord from plain values (None dropped, tuples as lists)."""
    clean = {
        k: (list(v) if isinstance(v, tuple) else v) for k, v in values.items() if v is not None
    }
    return ConfigRecord(clean)  # type: ignore[arg-type]


def request(config: Mapping[str, object], **records: object) -> RecordDict:
    """A new RecordDict with a config record plus any other records given by key."""
    content = RecordDict({CONFIG_KEY: config_record(config)})
    for key, record in records.items():
        content[key] = record  # type: ignore[assignment]
    return content
