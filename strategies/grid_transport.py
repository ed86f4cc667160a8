"""The Flower edge of the coordinator: the pipeline's Transport over a Flower Grid.

Each request becomes its own Message (a freshly built RecordDict, never shared); each reply is
decoded into the typed reply the request expects. An error reply, or a reply that does not decode,
comes back as a Failure with its reason; the pipeline decides what to keep.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from flwr.app import Message
from flwr.serverapp import Grid

from medusa_fed.errors import MedusaError
from medusa_fed.pipeline.transport import Failure
from medusa_fed.protocol import ERROR_RESEND, REPLY_TYPE, Reply, Request
from medusa_fed.protocol.flower import from_content, to_content

log = logging.getLogger(__name__)


class GridTransport:
    """:class:`medusa_fed.pipeline.Transport` over ``grid`` (simulation or deployment)."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid

    def nodes(self) -> list[int]:
        return sorted(self.grid.get_node_ids())

    def exchange(
        self, stage: str, requests: Mapping[int, Request], timeout_s: float
    ) -> list[tuple[int, Reply | Failure]]:
        expected = {node: REPLY_TYPE[type(r)] for node, r in requests.items()}
        messages = [
            Message(
                to_content(request),
                dst_node_id=node,
                message_type=request.MESSAGE_TYPE,
                group_id=stage,
            )
            for node, request in requests.items()
        ]
        out: list[tuple[int, Reply | Failure]] = []
        for reply in self.grid.send_and_receive(messages, timeout=timeout_s):
            node = reply.metadata.src_node_id
            if reply.has_error():
                resend = reply.error.code == ERROR_RESEND  # the site lacks a light request's state
                out.append((node, Failure(f"error reply: {reply.error.reason}", resend)))
                continue
            if node not in expected:
                out.append((node, Failure("reply from a node that was not asked")))
                continue
            try:
                out.append((node, from_content(expected[node], reply.content)))
            except (MedusaError, KeyError, TypeError) as exc:
                out.append((node, Failure(f"payload rejected: {exc}")))
        return out
