"""Stage 0, HELLO: who is connected, and did every team load the same base?"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict

from medusa_fed.pipeline.state import Roster, RunState, send
from medusa_fed.pipeline.transport import Transport
from medusa_fed.protocol import PROTOCOL_VERSION, HelloReply, HelloRequest

log = logging.getLogger(__name__)

# a team name becomes a file name in the run directory and the history: safe characters only
TEAM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


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
    claims: dict[str, list[str]] = {}
    bound = state.config.team_node_table
    for placeholder, reply in replies.items():
        if bound and bound.get(node_of[placeholder]) != reply.team:
            registered = bound.get(node_of[placeholder])
            state.reject(
                placeholder,
                "hello",
                f"node {node_of[placeholder]} says it is team {reply.team[:80]!r}, expected "
                + (
                    f"{registered!r} (the team its key was registered for, team-nodes)"
                    if registered
                    else "a node listed in team-nodes (its key was registered for no team)"
                )
                + "; the node is left out",
            )
        elif TEAM_NAME.fullmatch(reply.team):
            claims.setdefault(reply.team, []).append(placeholder)
        else:
            state.reject(
                placeholder,
                "hello",
                f"team name {reply.team[:80]!r}: expected 1-64 letters, digits, '-' or '_' "
                "(not starting with '-' or '_'); the node is left out",
            )
    for team, placeholders in sorted(claims.items()):
        if len(placeholders) > 1:  # neither can prove it is the team: both stay out
            claimants = ", ".join(p.removeprefix("node-") for p in placeholders)
            reason = (
                f"team name {team!r} claimed by nodes {claimants}; names are unique, all of "
                "them are left out"
            )
            for placeholder in placeholders:
                state.reject(placeholder, "hello", reason)
            log.warning("hello: %s", reason)
            continue
        reply = replies[placeholders[0]]
        state.roster.node_of[team] = node_of[placeholders[0]]
        state.roster.hello[team] = reply
        if reply.fingerprint != state.fingerprint:
            reason = (
                f"base fingerprint {reply.fingerprint[:12]}... differs from the "
                f"coordinator's {state.fingerprint[:12]}...: the team loaded another base"
            )
            state.drop(team, "hello", reason)
            continue
        if not reply.controlled and not state.config.allow_uncontrolled:
            state.drop(
                team,
                "hello",
                "declared itself uncontrolled (controlled = false); this run allows only teams "
                "that accept masks (allow-uncontrolled = false)",
            )
            continue
        state.run_dir.write_json(f"hello/{team}.json", hello_facts(reply))
    teams = state.usable("hello")
    log.info(
        "hello: teams %s (uncontrolled: %s)",
        teams,
        [t for t in teams if not state.roster.controlled(t)],
    )
