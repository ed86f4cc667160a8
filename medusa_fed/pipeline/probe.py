"""Stages 1 and 2, PROBE and ASSIGN: each team's top-d probe delta, then one owner per element."""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

from medusa_fed import codec
from medusa_fed.deltas import SparseDelta
from medusa_fed.errors import ConfigError, MedusaError, PayloadError
from medusa_fed.ownership import OwnershipMap, assign_ownership
from medusa_fed.ownership.lora_rank import component_probe, component_shapes, expand_components
from medusa_fed.pipeline.state import RunState, send
from medusa_fed.pipeline.transport import Transport
from medusa_fed.protocol import ProbeReply, ProbeRequest

log = logging.getLogger(__name__)


def probe(state: RunState, transport: Transport) -> None:
    """Collect each team's top-d probe delta (uncontrolled teams probe too: they steer the
    direction, paper Algorithm 1 line 5). A stored probe is not asked for again."""
    teams = state.usable("probe")
    cfg = state.config
    todo = [t for t in teams if not state.stored(t, "probe", f"probe/{t}.safetensors")]
    request = ProbeRequest(state.settings(cfg.probe_epochs, cfg.probe_max_steps), cfg.probe_density)
    replies = send(state, transport, "probe", lambda _t: request, ProbeReply, teams=todo)
    for team, reply in replies.items():
        try:
            state.check_sender(team, reply.sender)
            sparse = codec.decode_sparse_delta(  # validate, then store
                reply.delta, state.shapes, team=team, max_bytes=state.max_payload_bytes
            )
            check_density(sparse, cfg.probe_density)
        except MedusaError as exc:
            state.drop(team, "probe", f"payload rejected: {exc}")
            continue
        state.run_dir.write_tensors(
            f"probe/{team}.safetensors",
            {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in reply.delta.items()},
        )
        state.count(team, "probe", sent=0, received=codec.payload_nbytes(reply.delta))
    state.usable("probe")


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


def load_probes(state: RunState) -> dict[str, dict[str, SparseDelta]]:
    """Every active team's stored probe, decoded."""
    probes = {}
    for team in state.roster.active:
        tensors, _ = state.run_dir.read_tensors(f"probe/{team}.safetensors")
        arrays = {k: v.numpy() for k, v in tensors.items()}
        probes[team] = codec.decode_sparse_delta(arrays, state.shapes, team=team)
    return probes


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
    probes, space = load_probes(state), dict(state.shapes)
    rank_unit = state.config.ownership_unit == "lora-rank"
    if rank_unit:  # assign whole LoRA rank components, then write each owner to its elements
        probes = {t: component_probe(p, state.shapes) for t, p in probes.items()}
        space = component_shapes(state.shapes)
    state.ownership = assign_ownership(
        probes,
        space,
        controlled,
        policy=state.config.assignment,
        unselected=state.config.unselected,
        seed=state.config.seed,
        progress=True,
    )
    if rank_unit:
        state.ownership = expand_components(state.ownership, state.shapes)
    state.ownership.save(state.run_dir.file_path("ownership.safetensors"))
    state.run_dir.record_file("ownership.safetensors")
    log.info("assign: owned elements per team %s", state.ownership.owned_counts())
