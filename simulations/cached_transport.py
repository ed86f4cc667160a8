"""A caching layer under the pipeline: a branch trained once is reused by every run that asks again.

The benchmark runs the same pipeline many times over the same teams (one run per setting, seed and
Medusa variant); a probe or an unmasked branch asked for with the same request is the same
computation every time. :class:`CachedSites` answers such a request from its cache, including what
the original call left in the team's node state (the heads later requests continue), so a replay
is indistinguishable from the call. Evaluations are never cached (they read heads the cache does
not key on).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import fields, is_dataclass
from typing import Any

import numpy as np

from clients.team_site import TeamSite
from medusa_fed.pipeline.transport import DirectTransport
from medusa_fed.protocol import EvalRequest, Reply, Request

log = logging.getLogger(__name__)


def digest(obj: Any) -> str:
    """A stable SHA-256 of a protocol message: every scalar and every payload array's bytes."""
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def _feed(h: Any, obj: Any) -> None:
    if is_dataclass(obj):
        h.update(type(obj).__name__.encode())
        for f in fields(obj):
            h.update(f.name.encode())
            _feed(h, getattr(obj, f.name))
    elif isinstance(obj, dict):
        for key in sorted(obj):
            h.update(str(key).encode())
            _feed(h, obj[key])
    elif isinstance(obj, np.ndarray):
        h.update(f"{obj.dtype}{obj.shape}".encode())
        h.update(np.ascontiguousarray(obj).tobytes())
    else:
        h.update(repr(obj).encode())


class CachedSites:
    """Team sites that remember their replies.

    Parameters
    ----------
    make_site : Callable[[str], TeamSite]
        Builds the site for a key (the benchmark: team, seed, controlled) on first use.
    """

    def __init__(self, make_site: Callable[[str], TeamSite]) -> None:
        self.make_site = make_site
        self.sites: dict[str, TeamSite] = {}
        self.replies: dict[tuple[str, str], tuple[Reply, dict[str, Any]]] = {}
        self.hits = 0
        self.misses = 0

    def handler(self, key: str) -> Callable[[Request], Reply]:
        if key not in self.sites:
            self.sites[key] = self.make_site(key)
        site = self.sites[key]

        def handle(request: Request) -> Reply:
            if isinstance(request, EvalRequest):
                return site.handle(request)
            cache_key = (key, digest(request))
            assert site.state is not None
            if cache_key in self.replies:
                self.hits += 1
                reply, writes = self.replies[cache_key]
                for name, value in writes.items():  # the node state the call left behind
                    site.state[name] = value
                return reply
            self.misses += 1
            before = dict(site.state.items())  # references: a rewritten entry is a new object
            reply = site.handle(request)
            writes = {n: v for n, v in site.state.items() if before.get(n) is not v}
            self.replies[cache_key] = (reply, writes)
            return reply

        return handle

    def transport(self, keys: Mapping[int, str]) -> DirectTransport:
        """A transport to the sites ``keys`` names, node id -> site key."""
        return DirectTransport({node: self.handler(key) for node, key in keys.items()})
