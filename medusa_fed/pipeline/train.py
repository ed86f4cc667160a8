"""Stage 3, TRAIN (masked rounds) and FREE (unmasked branches for the compared merges).

With ``rounds = R > 1`` the budget is split into R rounds. Round r > 1 starts every team from the
Medusa merge of everything trained so far, with the head it ended round r - 1 with; ownership is
kept. Each round's replies are stored in ``train-round<r>/``; a team's branch in ``train/`` is then
the sum of its round deltas (its total change from the base), so the final merge is the same
function of ``train/`` as in a one-round run.

With ``warm-start`` (the default) a team's branch begins as its stored probe values on the elements
it owns: round 1 starts from their merge, each team with the head its probe left at its site, and
the rounds train ``epochs - probe-epochs``.
"""

from __future__ import annotations

import logging

import torch

from medusa_fed import codec
from medusa_fed.codec.downlink import fingerprint
from medusa_fed.deltas import SparseDelta, StateDict
from medusa_fed.errors import MedusaError, PayloadError
from medusa_fed.merging.rounds import add_round, owned_probe, round_start
from medusa_fed.pipeline.downlink import Lacking, lacking
from medusa_fed.pipeline.probe import load_probes
from medusa_fed.pipeline.state import Branches, RunState, send
from medusa_fed.pipeline.transport import Transport
from medusa_fed.protocol import BranchReply, FreeRequest, TrainRequest
from medusa_fed.protocol import finite_metrics as finite

log = logging.getLogger(__name__)


def train(state: RunState, transport: Transport) -> None:
    """Masked fine-tuning: each controlled team gets its own mask and returns owned values; an
    uncontrolled team trains freely and returns its full delta."""
    rounds = state.config.rounds
    if rounds == 1 and not state.config.warm:
        train_round(state, transport, "train", 1, None, {})
        load_branches(state, "train", state.masked)
        return
    total: dict[str, StateDict] = warm_totals(state) if state.config.warm else {}
    metrics: dict[str, dict[str, float]] = {}
    last = Branches()
    for r in range(1, rounds + 1):
        stage = f"train-round{r}"
        start = next_start(state, total) if total else None
        train_round(state, transport, stage, r, start, last.heads, total)
        last = Branches()
        load_branches(state, stage, last)
        for team, delta in last.deltas.items():
            total[team] = add_round(total.get(team), delta)
            metrics[team] = metrics.get(team, {}) | last.metrics[team]
        log.info("train: round %d/%d done (%d teams)", r, rounds, len(last.deltas))
    for team in state.usable("train"):
        if team in last.deltas:
            commit_branch(state, "train", team, total[team], last.heads.get(team), metrics[team])
    load_branches(state, "train", state.masked)


def warm_totals(state: RunState) -> dict[str, StateDict]:
    """Each team's branch before round 1 of a warm start: its stored probe values on the elements
    it owns (every probe value for an uncontrolled team), dense."""
    assert state.ownership is not None  # set by assign()
    totals = {}
    for team, sparse in load_probes(state).items():
        mask = state.ownership.mask(team) if state.roster.controlled(team) else None
        totals[team] = owned_probe(sparse, mask)
    return totals


def next_start(state: RunState, total: dict[str, StateDict]) -> StateDict:
    """Shared weights the next round starts from: the plain Medusa merge (scale 1) of every
    active team's total delta so far."""
    deltas = {t: d for t, d in total.items() if t in state.roster.active}
    uncontrolled = [t for t in deltas if not state.roster.controlled(t)]
    return round_start(state.base_state, deltas, uncontrolled)


def train_round(
    state: RunState,
    transport: Transport,
    stage: str,
    r: int,
    start: StateDict | None,
    heads: dict[str, StateDict],
    totals: dict[str, StateDict] | None = None,
) -> None:
    """One round of TRAIN: ask every team without a stored reply, store what comes back.

    ``totals`` are the teams' branches ``start`` was merged from: a controlled team is sent only
    the values of ``start`` it lacks (``downlink = lacking``), the dense start if its site lost
    its own total."""
    assert state.ownership is not None
    cfg = state.config
    teams = state.usable(stage)
    todo = [t for t in teams if not branch_stored(state, t, stage)]
    masks = {t: state.ownership.mask(t) for t in teams if state.roster.controlled(t)}
    start_arrays = codec.encode_dense(start) if start is not None else None
    own_from = f"train-round{r - 1}" if r > 1 else ("probe" if cfg.warm else "")
    light: dict[str, Lacking | None] = {}
    if start is not None and cfg.downlink == "lacking":
        sha = fingerprint(start)
        for team in todo:
            own = (totals or {}).get(team)
            light[team] = lacking(state, team, start, own, cfg.downlink_dtype, sha)

    def build(team: str, dense: bool = False) -> TrainRequest:
        mask = codec.encode_mask(masks[team]) if team in masks else None
        lack = None if dense else light.get(team)
        full = start_arrays if lack is None else None
        payloads = (mask, full, lack.payload if lack else None)
        sent = sum(codec.payload_nbytes(p) for p in payloads if p is not None)
        if dense:  # the fallback: the light request went out first
            sent += state.bytes.get(team, {}).get(stage, {}).get("sent", 0)
        state.count(team, stage, sent=sent, received=0)
        return TrainRequest(
            settings=state.settings(cfg.round_epochs, cfg.round_max_steps),
            round=r,
            rounds=cfg.rounds,
            branch="train" if r == cfg.rounds else f"train-round{r}",
            head_from=f"train-round{r - 1}" if r > 1 else ("probe" if cfg.warm else ""),
            masked_lr_scale=cfg.masked_lr_scale,  # read by controlled teams only
            masked_lr_choices=cfg.masked_lr_choices,
            budget_epochs=cfg.epochs,  # the whole budget: what the floor head trains for
            budget_max_steps=cfg.max_steps,
            own_from=own_from if team in masks else "",
            start_fingerprint=lack.fingerprint if lack else "",
            downlink_dtype=cfg.downlink_dtype,
            mask=mask,
            start=full,
            lack=lack.payload if lack else None,
            head=codec.encode_dense(heads[team]) if heads.get(team) else None,
        )

    def dense(team: str) -> TrainRequest:
        return build(team, dense=True)

    replies = send(state, transport, stage, build, BranchReply, teams=todo, fallback=dense)
    probes = load_probes(state) if cfg.update_norm_ratio > 0 else {}
    for team, reply in replies.items():
        bound = None
        if team in probes:  # owned elements (every element for an uncontrolled team)
            bound = cfg.update_norm_ratio * probe_norm(probes[team], masks.get(team))
        store_branch(state, team, stage, reply, masks.get(team), bound)


def train_free(state: RunState, transport: Transport) -> None:
    """Unmasked fine-tuning for the post-hoc merges (the same budget as TRAIN)."""
    teams = state.usable("baseline")
    todo = [t for t in teams if not branch_stored(state, t, "baseline")]
    request = FreeRequest(state.settings())
    replies = send(state, transport, "baseline", lambda _t: request, BranchReply, teams=todo)
    for team, reply in replies.items():
        store_branch(state, team, "baseline", reply, None)
    load_branches(state, "baseline", state.free)


def store_branch(
    state: RunState,
    team: str,
    stage: str,
    reply: BranchReply,
    mask: dict[str, torch.Tensor] | None,
    max_norm: float | None = None,
) -> None:
    """Validate one training reply completely, then store it (payload, head, metrics);
    ``max_norm`` bounds the L2 norm of the delta (None = no bound)."""
    limit = state.max_payload_bytes
    try:
        state.check_sender(team, reply.sender)
        if mask is not None:  # controlled: owned values only, in mask order
            delta = codec.decode_owned_values(reply.delta, mask, team=team, max_bytes=limit)
        else:
            delta = codec.decode_dense(reply.delta, state.shapes, team=team, max_bytes=limit)
        head = (
            codec.decode_dense(reply.head, None, team=team, max_bytes=limit)
            if reply.head is not None
            else {}
        )
        if max_norm is not None:
            check_update_norm(team, delta, max_norm, state.config.update_norm_ratio)
        metrics = finite(reply.metrics)
        shared = sorted(set(head) & set(state.shapes))
        if shared:
            raise PayloadError(
                f"head tensors {shared[:3]} are shared-space names; expected the team's own "
                "head only (it is never merged)"
            )
    except MedusaError as exc:
        state.drop(team, stage, f"payload rejected: {exc}")
        return
    commit_branch(state, stage, team, delta, head, metrics)
    prev = state.bytes.get(team, {}).get(stage, {}).get("sent", 0)
    state.count(team, stage, sent=prev, received=codec.payload_nbytes(reply.delta))


def probe_norm(probe: dict[str, SparseDelta], mask: dict[str, torch.Tensor] | None) -> float:
    """L2 norm of a team's probe on the elements of ``mask`` (all of them when None)."""
    total = 0.0
    for name, d in probe.items():
        values = d.values.double()
        if mask is not None:
            values = values[mask[name].reshape(-1)[d.indices]]
        total += float(values.square().sum())
    return total**0.5


def check_update_norm(team: str, delta: StateDict, max_norm: float, ratio: float) -> None:
    """Refuse a delta whose L2 norm exceeds ``max_norm`` (``ratio`` x the team's own probe on
    the same elements): a team's training may move its elements further than its probe did, but
    not by orders of magnitude (values scaled by 1e6 would drive every team to chance)."""
    norm = sum(float(t.double().square().sum()) for t in delta.values()) ** 0.5
    log.info(
        "train: team %r update norm %.4g = %.3g x its probe's on the same elements",
        team,
        norm,
        norm * ratio / max_norm if max_norm > 0 else float("inf"),
    )
    if norm > max_norm:
        raise PayloadError(
            f"update L2 norm {norm:.4g}: expected at most {max_norm:.4g} (update-norm-ratio "
            f"{ratio:g} x the norm of the team's own probe on the same elements); payload "
            "rejected, other teams unaffected"
        )


def commit_branch(
    state: RunState,
    stage: str,
    team: str,
    delta: StateDict,
    head: StateDict | None,
    metrics: dict[str, float],
) -> None:
    """Store one team's branch as a unit: metrics and head first, the delta last. Each file is
    atomic and the delta file marks the unit complete (``branch_stored``), so a kill between two
    writes leaves at most an incomplete unit that is asked for again, never one half-read."""
    state.run_dir.write_json(f"{stage}/{team}.metrics.json", metrics)
    if head:
        state.run_dir.write_tensors(f"{stage}/{team}.head.safetensors", head)
    elif state.run_dir.exists(f"{stage}/{team}.head.safetensors"):  # from an interrupted write
        state.run_dir.remove(f"{stage}/{team}.head.safetensors")
    state.run_dir.write_tensors(f"{stage}/{team}.safetensors", delta)


def branch_stored(state: RunState, team: str, stage: str) -> bool:
    """Whether ``team``'s branch of ``stage`` is stored complete and intact (else it is removed
    and the team asked again)."""
    rel = f"{stage}/{team}.safetensors"
    if not state.stored(team, stage, rel):
        return False
    if state.run_dir.exists(f"{stage}/{team}.metrics.json", verify=True):
        return True
    state.discard(team, stage, rel, "has no metrics beside it (an interrupted write)")
    return False


def load_branches(state: RunState, stage: str, into: Branches) -> None:
    """Read every active team's stored reply of ``stage`` into ``into``."""
    for team in state.usable(stage):
        if not state.run_dir.exists(f"{stage}/{team}.safetensors"):
            continue
        into.deltas[team], _ = state.run_dir.read_tensors(f"{stage}/{team}.safetensors")
        if state.run_dir.exists(f"{stage}/{team}.head.safetensors"):
            into.heads[team], _ = state.run_dir.read_tensors(f"{stage}/{team}.head.safetensors")
        into.metrics[team] = state.run_dir.read_json(f"{stage}/{team}.metrics.json")
