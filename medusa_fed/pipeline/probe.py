"""Stages 1 and 2, PROBE and ASSIGN: each team's top-d probe delta, then one owner per element."""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

from medusa_fed import codec
from medusa_fed.codec.layout import Payload
from medusa_fed.deltas import SparseDelta
from medusa_fed.errors import ConfigError, MedusaError, PayloadError
from medusa_fed.ownership import OwnershipMap, assign_ownership
from medusa_fed.ownership.fairness import cap_shares, rank_weights
from medusa_fed.ownership.units import UNITS
from medusa_fed.pipeline.state import RunState, send
from medusa_fed.pipeline.transport import Transport
from medusa_fed.protocol import ProbeReply, ProbeRequest

log = logging.getLogger(__name__)


def probe(state: RunState, transport: Transport) -> None:
    """Collect each team's top-d probe delta (uncontrolled teams probe too: they steer the
    direction, paper Algorithm 1 line 5). A stored probe is not asked for again."""
    teams = state.usable("probe")
    cfg = state.config
    fisher = cfg.probe_scores == "fisher"
    # the scores are stored first, the delta last: a stored delta means a complete probe
    todo = [
        t
        for t in teams
        if not state.stored(t, "probe", f"probe/{t}.safetensors")
        or (fisher and not state.stored(t, "probe", f"probe/{t}.scores.safetensors"))
    ]
    request = ProbeRequest(
        state.settings(cfg.probe_epochs, cfg.probe_max_steps), cfg.probe_density, cfg.probe_scores
    )
    replies = send(state, transport, "probe", lambda _t: request, ProbeReply, teams=todo)
    base_norm = sum(float(t.double().square().sum()) for t in state.base_state.values()) ** 0.5
    for team, reply in replies.items():
        try:
            state.check_sender(team, reply.sender)
            sparse = codec.decode_sparse_delta(  # validate, then store
                reply.delta, state.shapes, team=team, max_bytes=state.max_payload_bytes
            )
            check_density(sparse, cfg.probe_density)
            check_probe_norm(team, sparse, base_norm)
            if fisher:
                check_scores(reply.scores, sparse, state, team)
        except MedusaError as exc:
            state.drop(team, "probe", f"payload rejected: {exc}")
            continue
        if fisher and reply.scores is not None:
            _write_payload(state, f"probe/{team}.scores.safetensors", reply.scores)
        _write_payload(state, f"probe/{team}.safetensors", reply.delta)
        got = codec.payload_nbytes(reply.delta)
        got += codec.payload_nbytes(reply.scores) if fisher and reply.scores is not None else 0
        state.count(team, "probe", sent=0, received=got)
    state.usable("probe")


def check_scores(
    scores: Payload | None, sparse: dict[str, SparseDelta], state: RunState, team: str
) -> None:
    """A Fisher probe's scores: present, one per kept delta entry (the same indices), finite and
    >= 0; PayloadError naming what was expected and found."""
    if scores is None:
        raise PayloadError("probe-scores = fisher: expected the entries' scores, found none")
    got = codec.decode_sparse_delta(
        scores, state.shapes, team=team, max_bytes=state.max_payload_bytes
    )
    for name, s in got.items():  # the codec has checked that every tensor is there
        if not torch.equal(s.indices, sparse[name].indices):
            raise PayloadError(
                f"scores of {name}: expected the probe delta's indices, found others"
            )
        if bool((s.values < 0).any()):
            raise PayloadError(f"scores of {name}: expected values >= 0, found a negative one")


def probe_weights(state: RunState) -> dict[str, dict[str, SparseDelta]]:
    """What the assignment weighs: each team's probe delta, or under probe-scores = fisher its
    scores with the delta's signs (the direction rule still reads the sign)."""
    probes = load_probes(state)
    if state.config.probe_scores != "fisher":
        return probes
    out = {}
    for team, probe in probes.items():
        scores = _read_sparse(state, f"probe/{team}.scores.safetensors", team)
        out[team] = {
            n: SparseDelta(
                d.shape, d.indices, scores[n].values.float() * torch.sign(d.values.float())
            )
            for n, d in probe.items()
        }
    return out


def check_density(sparse: dict[str, SparseDelta], density: float) -> None:
    """A probe holds at most the announced top-d of each tensor (``ceil(d * numel)`` values, as
    :func:`medusa_fed.deltas.top_d` keeps): a denser one would claim elements it has no right to
    compete for."""
    for name, s in sparse.items():
        numel = math.prod(s.shape)
        limit = math.ceil(density * numel)
        if len(s.indices) > limit:
            raise PayloadError(
                f"{name}: expected at most {limit:,} probe values (probe-density {density:g} of "
                f"{numel:,}), found {len(s.indices):,}; payload rejected"
            )


# A probe is a short fine-tune: it moves the shared weights by a small fraction of their size
# (measured: 0.0013-0.0014 of the base's L2 norm for MiniLM at lr 5e-5, 0.06 for the tests' tiny
# BERT at lr 3e-3). One larger than the base itself is no probe; its values would also be the
# team's warm-start values on the elements it owns.
MAX_PROBE_NORM = 1.0  # times the L2 norm of the base's shared weights


def check_probe_norm(team: str, sparse: dict[str, SparseDelta], base_norm: float) -> None:
    """Refuse a probe whose L2 norm exceeds ``MAX_PROBE_NORM`` x the base's (1e30-scaled
    values, say): rank weights make its scale harmless to the assignment, not to the warm start
    or to the update-norm bound that is relative to it."""
    norm = sum(float(s.values.double().square().sum()) for s in sparse.values()) ** 0.5
    log.info("probe: team %r probe norm %.4g = %.3g x the base's", team, norm, norm / base_norm)
    if norm > MAX_PROBE_NORM * base_norm:
        raise PayloadError(
            f"probe L2 norm {norm:.4g}: expected at most {MAX_PROBE_NORM:g} x the base's shared "
            f"weights ({MAX_PROBE_NORM * base_norm:.4g}); payload rejected"
        )


def load_probes(state: RunState) -> dict[str, dict[str, SparseDelta]]:
    """Every active team's stored probe, decoded."""
    return {t: _read_sparse(state, f"probe/{t}.safetensors", t) for t in state.roster.active}


def _write_payload(state: RunState, rel: str, payload: Payload) -> None:
    """Store a validated sparse payload as it came (one safetensors file)."""
    arrays = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in payload.items()}
    state.run_dir.write_tensors(rel, arrays)


def _read_sparse(state: RunState, rel: str, team: str) -> dict[str, SparseDelta]:
    """A stored sparse payload (a probe delta or its scores), decoded."""
    tensors, _ = state.run_dir.read_tensors(rel)
    return codec.decode_sparse_delta(
        {k: v.numpy() for k, v in tensors.items()}, state.shapes, team=team
    )


def assign(state: RunState) -> None:
    """Give every shared element one owner among the controlled teams (GPA); a stored map is
    reused."""
    if state.run_dir.exists("ownership.safetensors", verify=True):
        state.ownership = OwnershipMap.load(state.run_dir.file_path("ownership.safetensors"))
        log.info("assign: ownership map loaded from the run directory")
        return
    teams = state.usable("assign")
    controlled = {t: state.roster.controlled(t) for t in teams}
    if not any(controlled.values()):
        raise ConfigError(
            "assign: every team refused masks (controlled = false); Medusa has "
            "nothing to assign. Use merge = ties (or another baseline) instead"
        )
    cfg = state.config
    probes, space = probe_weights(state), dict(state.shapes)
    # a coarser unit (whole LoRA rank components, whole rows): assign in its space, then write
    # each owner to its elements
    unit = UNITS.get(cfg.ownership_unit)
    if unit is not None:
        probes = {t: unit.probe(p, state.shapes) for t, p in probes.items()}
        space = unit.shapes(state.shapes)
    if cfg.probe_weights == "rank":  # comparable across teams: no scale wins a share
        probes = {team: rank_weights(p) for team, p in probes.items()}
    ownership = assign_ownership(
        probes,
        space,
        controlled,
        policy=cfg.assignment,
        unselected=cfg.unselected,
        seed=cfg.seed,
        progress=True,
    )
    ownership = cap_shares(ownership, probes, cfg.max_share, cfg.seed)  # in the unit's space
    state.ownership = unit.expand(ownership, state.shapes) if unit is not None else ownership
    state.ownership.save(state.run_dir.file_path("ownership.safetensors"))
    state.run_dir.record_file("ownership.safetensors")
    log.info("assign: owned elements per team %s", state.ownership.owned_counts())
