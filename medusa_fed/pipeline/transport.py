"""How the pipeline reaches the teams: a Transport sends typed requests and returns what came back.

The pipeline never sees Flower. ``strategies.grid_transport.GridTransport`` carries the same
requests over a Flower Grid (simulation or deployment); :class:`DirectTransport` calls each team's
handler in this process (tests, ``--backend inprocess``, the benchmark). A transport reports what
each node answered, in arrival order, duplicates included: the pipeline decides what to keep.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from medusa_fed.errors import MedusaError, StateMissing
from medusa_fed.protocol import REPLY_TYPE, Reply, Request

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Failure:
    """A node answered with an error, or its reply could not be decoded. ``resend``: the site
    lacks what a light request relied on (StateMissing); it is sent the full payload instead."""

    reason: str
    resend: bool = False


class Transport(Protocol):
    def nodes(self) -> list[int]:
        """The connected nodes (ids are uint64: plain Python ints)."""
        ...

    def exchange(
        self, stage: str, requests: Mapping[int, Request], timeout_s: float
    ) -> list[tuple[int, Reply | Failure]]:
        """Send ``requests[node]`` to each node; return (node, reply or failure) pairs as they
        arrived within ``timeout_s`` (a node that did not answer is simply absent)."""
        ...


def error_reason(exc: BaseException) -> str:
    """The reason a team site gives for a failed request (the same text on every transport): a
    MedusaError's message, or any other exception with a short traceback."""
    if isinstance(exc, MedusaError):
        return f"{type(exc).__name__}: {exc}"
    return f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}"


Handler = Callable[[Request], Reply]


class DirectTransport:
    """Each node's handler called in this process, one after another (no Flower, no copies).

    Parameters
    ----------
    handlers : Mapping[int, Handler]
        Node id -> the team site's request handler (``TeamSite.handle``).
    silent : set[int] | None (default: None)
        Nodes that never answer (a timeout, as the coordinator sees it).
    """

    def __init__(self, handlers: Mapping[int, Handler], silent: set[int] | None = None) -> None:
        self.handlers = dict(handlers)
        self.silent = set(silent or ())

    def nodes(self) -> list[int]:
        return sorted(self.handlers)

    def exchange(
        self, stage: str, requests: Mapping[int, Request], timeout_s: float
    ) -> list[tuple[int, Reply | Failure]]:
        out: list[tuple[int, Reply | Failure]] = []
        for node, request in requests.items():
            if node in self.silent:
                continue
            if node not in self.handlers:
                out.append((node, Failure(f"error reply: no node {node}")))
                continue
            try:
                reply = self.handlers[node](request)
            except Exception as exc:  # noqa: BLE001 - reported as the team's failure
                resend = isinstance(exc, StateMissing)
                level = logging.INFO if resend else logging.ERROR
                log.log(level, "%s: node %d: %s", stage, node, str(exc).splitlines()[0])
                out.append((node, Failure(f"error reply: {error_reason(exc)}", resend)))
                continue
            expected = REPLY_TYPE[type(request)]
            if not isinstance(reply, expected):
                out.append((node, Failure(f"expected a {expected.__name__}, found {reply!r}")))
                continue
            out.append((node, reply))
        return out
