"""A Flower Grid that delivers messages to ClientApps in this same process, one after another.

It runs the real ServerApp logic and the real ClientApp handlers with real Flower Messages, only
without Ray or a SuperLink: the tests of the coordinator's Flower path use it (fast,
deterministic). Nodes can be told to fail, stay silent or have their replies tampered with, to
exercise the coordinator's handling of errors and timeouts. (``medusa simulate --backend
inprocess`` and the benchmark skip Flower altogether: ``medusa_fed.pipeline.DirectTransport``.)
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

log = logging.getLogger(__name__)

SERVER_NODE_ID = 0


class InProcessGrid(Grid):
    """Route each message to ``client_app`` with the destination node's own Context.

    Parameters
    ----------
    client_app : ClientApp
        The team-side app every node runs.
    node_configs : Mapping[int, Mapping[str, Any]]
        Node id -> that node's node config (e.g. its task and whether it is controlled).
    silent : set[int] | None (default: None)
        Nodes that never answer (a timeout, as the coordinator sees it).
    tamper : Callable[[int, Message, Message], list[Message]] | None (default: None)
        Fault injection: given (node id, request, reply), the replies to deliver instead (none:
        a lost reply; two: a duplicate; a changed one: a corrupted payload).
    run_id : int (default: 1)
    """

    def __init__(
        self,
        client_app: ClientApp,
        node_configs: Mapping[int, Mapping[str, Any]],
        silent: set[int] | None = None,
        tamper: Callable[[int, Message, Message], list[Message]] | None = None,
        run_id: int = 1,
    ) -> None:
        self.tamper = tamper
        self.client_app = client_app
        self.node_configs = {int(k): dict(v) for k, v in node_configs.items()}
        self.silent = set(silent or ())
        self.contexts = {
            nid: Context(
                run_id=run_id, node_id=nid, node_config=cfg, state=RecordDict(), run_config={}
            )
            for nid, cfg in self.node_configs.items()
        }
        self._run = Run.create_empty(run_id)
        self._ids = itertools.count(1)
        self._replies: dict[str, list[Message]] = {}
        self.sent: list[Message] = []  # every message pushed, for tests to inspect
        # Messages built outside a running Flower app need a task identity.
        TaskIdentity.run_id = run_id
        TaskIdentity.node_id = SERVER_NODE_ID
        TaskIdentity.task_id = 1

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(
            content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id, ttl=ttl
        )

    def get_node_ids(self) -> Iterable[int]:
        return list(self.node_configs)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            mid = f"m{next(self._ids)}"
            message.metadata.__dict__["_message_id"] = mid
            self.sent.append(message)
            ids.append(mid)
            node = message.metadata.dst_node_id
            if node in self.silent:
                continue
            if node not in self.contexts:
                reply = Message(Error(404, f"no node {node}"), reply_to=message)
            else:
                reply = self.client_app(message, self.contexts[node])
            replies = [reply] if self.tamper is None else self.tamper(node, message, reply)
            if replies:
                self._replies[mid] = replies
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [r for mid in message_ids if mid in self._replies for r in self._replies.pop(mid)]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return list(self.pull_messages(list(self.push_messages(messages))))
