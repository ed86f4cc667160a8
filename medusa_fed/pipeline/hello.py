"""Stage 0, HELLO: who is connected, and did every team load the same base?"""

from __future__ import annotations

import logging
from dataclasses import asdict

from medusa_fed.pipeline.state import Roster, RunState, send
from medusa_fed.pipeline.transport import Transport
from medusa_fed.protocol import PROTOCOL_VERSION, HelloReply, HelloRequest

log = logging.getLogger(__name__)


def hello_facts(reply: HelloReply) -> dict[str, object]:
    """A HELLO reply as stored in ``hello/<team>.json`` (kebab-case keys, as on the wire)."""
    return {
        k.replace("_", "-"): list(v) if isinstance(v, tuple) else v
        for k, v in asdict(reply).items()
    }


def hello(state: RunState, transport: Transport) -> None:
    """Ask every connected node who it is; keep those whose base fingerprint matches."""
    nodes = sorted(transport.nodes())
    log.info("hello: %d node(s) connected", len(nodes))
    request = HelloRequest(state.settings(), PROTOCOL_VERSION, state.fingerprint)
    for node in nodes:  # HELLO goes to nodes before their team names are known
        state.roster.node_of[f"node-{node}"] = node
    replies = send(state, transport, "hello", lambda _t: request, HelloReply)
    node_of = state.roster.node_of
    state.roster = Roster()
    for placeholder, reply in replies.items():
        team = reply.team
        if not team:
            state.reject(placeholder, "hello", "reply carries no team name")
            continue
        if team in state.roster.node_of:
            state.reject(team, "hello", f"team name {team!r} used by two nodes; second dropped")
            continue
        state.roster.node_of[team] = node_of[placeholder]
        state.roster.hello[team] = reply
        if reply.fingerprint != state.fingerprint:
            reason = (
                f"base fingerprint {reply.fingerprint[:12]}... differs from the "
                f"coordinator's {state.fingerprint[:12]}...: the team loaded another base"
            )
            state.drop(team, "hello", reason)
            continue
        state.run_dir.write_json(f"hello/{team}.json", hello_facts(reply))
    teams = state.usable("hello")
    log.info(
        "hello: teams %s (uncontrolled: %s)",
        teams,
        [t for t in teams if not state.roster.controlled(t)],
    )
