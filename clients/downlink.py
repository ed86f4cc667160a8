"""What a team site keeps between stages so the coordinator can send it only what it lacks.

- Its own total: the owned values it uploaded, summed over the rounds (plus its probe values on
  the elements it owns, with a warm start), in mask order, kept in the node's state under the
  branch it trained (``medusa-own-<branch>``); its probe payload under ``medusa-own-probe``.
  A round's start and Medusa's merged weights are then rebuilt from the values it lacks
  (``medusa_fed.codec.downlink``).
- The last merged weights it scored for each method, by fingerprint (in this process's memory,
  not the node's state: a dense copy per method), so a grid's candidate scored on validation is
  not sent again for test.

Whatever is rebuilt is hashed and compared with the coordinator's fingerprint. A site that lost
what it kept (a restart) or rebuilds other weights raises :class:`StateMissing`: the coordinator
then sends the full weights, and nothing else changes.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from flwr.app import RecordDict

from medusa_fed.codec import decode_sparse_delta
from medusa_fed.codec.downlink import DownlinkDtype, Vectors, decode_lacking, fingerprint
from medusa_fed.codec.downlink import owned_vectors as vectors_of
from medusa_fed.codec.layout import Payload, part_key
from medusa_fed.codec.records import arrays_from_record, record_from_arrays
from medusa_fed.deltas import StateDict
from medusa_fed.errors import StateMissing
from medusa_fed.merging.rounds import owned_probe

PROBE = "probe"
_HELD: dict[tuple[str, str], str] = {}  # (team, method label) -> the last merge it scored
_WEIGHTS: dict[str, StateDict] = {}  # fingerprint -> those weights, oldest first
MAX_HELD = 4  # merges kept in one process (dense copies; a benchmark scores dozens of methods)


def _key(branch: str) -> str:
    return f"medusa-own-{branch}"


def keep_probe(state: RecordDict, payload: Payload) -> None:
    """Keep the probe payload this team sent (a warm start's round 1 begins from it)."""
    state[_key(PROBE)] = record_from_arrays(payload)


def own_total(state: RecordDict, branch: str, masks: Mapping[str, torch.Tensor]) -> Vectors | None:
    """The team's own total kept after ``branch`` in mask order, or None when this site does not
    hold one that fits ``masks``."""
    key = _key(branch)
    if not branch or key not in state:
        return None
    arrays = arrays_from_record(state[key])  # type: ignore[arg-type]
    if branch == PROBE:
        shapes = {n: tuple(m.shape) for n, m in masks.items()}
        sparse = decode_sparse_delta(arrays, shapes)
        return vectors_of(owned_probe(sparse, masks), masks)
    out = {}
    for name, m in masks.items():
        values = arrays.get(part_key(name, "owned"))
        if values is None or values.shape != (int(torch.count_nonzero(m)),):
            return None
        out[name] = torch.from_numpy(values.copy())
    return out


def keep_own_total(
    state: RecordDict,
    own_from: str,
    branch: str,
    masks: Mapping[str, torch.Tensor],
    sent: Payload,
) -> None:
    """After a round: the total kept after ``own_from`` plus the owned values just ``sent``
    (the coordinator's sum, element by element), kept under ``branch``. Without the previous
    total (a restarted site) nothing is kept: later rounds get the dense start."""
    previous = own_total(state, own_from, masks) if own_from else None
    state.pop(_key(branch), None)
    if own_from and previous is None:
        return
    total: Payload = {}
    for name in masks:
        values = torch.from_numpy(sent[part_key(name, "owned")].copy())
        if previous is not None:
            values = previous[name] + values
        total[part_key(name, "owned")] = values.numpy()
    state[_key(branch)] = record_from_arrays(total)
    if own_from and own_from != branch:
        state.pop(_key(own_from), None)  # each round needs only the last total


def rebuild(
    state: RecordDict,
    team: str,
    what: str,
    lack: Payload,
    base: StateDict,
    masks: Mapping[str, torch.Tensor],
    own_from: str,
    dtype: DownlinkDtype,
    expected: str,
) -> StateDict:
    """Weights rebuilt from the values the team lacks and its own total after ``own_from``;
    StateMissing when this site holds no such total or the result's fingerprint is not
    ``expected`` (PayloadError: ``lack`` is malformed)."""
    own = own_total(state, own_from, masks)
    if own is None:
        raise StateMissing(
            f"team {team!r}: {what} is rebuilt from its own total after {own_from!r}, which this "
            "site does not hold (restarted?); expected it kept, the full weights are asked for"
        )
    weights = decode_lacking(lack, base, masks, own, dtype)
    found = fingerprint(weights)
    if found != expected:
        raise StateMissing(
            f"team {team!r}: {what} rebuilt with fingerprint {found[:12]}..., expected "
            f"{expected[:12]}...; the full weights are asked for"
        )
    return weights


def hold(team: str, label: str, weights: StateDict, sha: str) -> None:
    """Remember the last merged weights ``team`` scored for method ``label`` (one per method;
    teams in one process that scored the same weights share one copy; at most ``MAX_HELD``
    merges, the oldest dropped)."""
    _HELD[team, label] = sha
    _WEIGHTS.pop(sha, None)
    _WEIGHTS[sha] = weights  # the newest last
    while len(_WEIGHTS) > MAX_HELD:
        del _WEIGHTS[next(iter(_WEIGHTS))]
    for key in [k for k, v in _HELD.items() if v not in _WEIGHTS]:
        del _HELD[key]


def held(team: str, label: str, expected: str) -> StateDict:
    """The merged weights ``team`` scored last for ``label``, if their fingerprint is
    ``expected``; else StateMissing."""
    if _HELD.get((team, label)) != expected or expected not in _WEIGHTS:
        raise StateMissing(
            f"team {team!r}: expected to hold {label} merged weights {expected[:12]}... from an "
            "earlier EVAL, found none (restarted?); the full weights are asked for"
        )
    return _WEIGHTS[expected]
