"""The coordinator's side of the down-link: what a controlled team lacks of some shared weights.

A round's start (TRAIN, rounds > 1 or a warm start) and the run's Medusa merge (EVAL) are sums of
every team's own total. A controlled team holds the base and its own total, so it is sent only the
values it lacks (``medusa_fed.codec.downlink``) and the fingerprint of what it must rebuild; a
team whose site lost its total answers StateMissing and is sent the dense weights
(``pipeline.state.send``'s fallback). With ``downlink = dense``, an uncontrolled team, or weights
where the light payload would not be smaller, the dense weights are sent at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from medusa_fed import codec
from medusa_fed.codec.downlink import (
    DownlinkDtype,
    decode_lacking,
    encode_lacking,
    fingerprint,
    owned_vectors,
)
from medusa_fed.codec.layout import Payload
from medusa_fed.pipeline.state import RunState


@dataclass(frozen=True)
class Lacking:
    """What one team is sent instead of the dense weights."""

    payload: Payload  # codec.downlink layout
    fingerprint: str  # sha256 of the weights the team must rebuild


def lacking(
    state: RunState,
    team: str,
    weights: Mapping[str, torch.Tensor],
    own_total: Mapping[str, torch.Tensor] | None,
    dtype: DownlinkDtype,
    sha: str,
) -> Lacking | None:
    """What ``team`` lacks of float32 ``weights`` given its own total (the coordinator's copy of
    what the team holds, dense); None when the team is to get the dense weights.

    ``sha`` is the fingerprint of ``weights``: at fp32 the team rebuilds them bit for bit (the
    unowned values as sent, its own as base + own total, and a fix wherever that sum is not the
    weight), so both down-links give the same results. At fp16 / bf16 the team rebuilds other
    weights; their fingerprint is computed here from the same decoder the team runs.
    """
    if state.config.downlink != "lacking" or own_total is None:
        return None
    if not state.roster.controlled(team) or state.ownership is None:
        return None
    masks = state.ownership.mask(team)
    payload = encode_lacking(weights, state.base_state, masks, own_total, dtype)
    if codec.payload_nbytes(payload) >= codec.dense_fp32_nbytes(state.shapes):
        return None
    if dtype != "fp32":
        own = owned_vectors(own_total, masks)
        sha = fingerprint(decode_lacking(payload, state.base_state, masks, own, dtype))
    return Lacking(payload, sha)
