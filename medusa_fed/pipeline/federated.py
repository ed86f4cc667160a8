"""FEDERATED: the federated anchors a team would also try, with Medusa's budget and rounds.

For each method in ``federated`` (``linear`` = FedAvg, ``ties`` = TIES each round, any post-hoc
method), R = ``rounds`` rounds: every team fine-tunes unmasked from the last round's merge (round
1: from the base) for ``epochs / R``, continuing its own head (personal heads, as FedPer); the
coordinator merges the round's updates into the round's start with that method. The last merge
is the anchor's model, labelled ``fed-<method>``, scored in EVAL like every other (same head
re-fit). Each round's replies are stored in ``fed-<method>-round<r>/``, so a restart resumes.
"""

from __future__ import annotations

import logging

from medusa_fed import codec
from medusa_fed.deltas import StateDict
from medusa_fed.errors import MergeError
from medusa_fed.merging import check_finite, merge_states_with_report
from medusa_fed.merging.spec import MergeChoice
from medusa_fed.pipeline.merge import Candidate, keep, slug
from medusa_fed.pipeline.state import Branches, RunState, send
from medusa_fed.pipeline.train import branch_stored, load_branches, store_branch
from medusa_fed.pipeline.transport import Transport
from medusa_fed.protocol import BranchReply, TrainRequest

log = logging.getLogger(__name__)


def label_of(choice: MergeChoice) -> str:
    return f"fed-{choice.label}"


def round_stage(label: str, r: int) -> str:
    """Where round ``r`` of an anchor is stored (and the branch its heads are kept under)."""
    return f"{slug(label)}-round{r}"


def federated(state: RunState, transport: Transport) -> None:
    for choice in state.config.federated:
        anchor(state, transport, choice)


def anchor(state: RunState, transport: Transport, choice: MergeChoice) -> None:
    """R rounds of unmasked training and merging with ``choice``; keeps the final merge."""
    cfg = state.config
    label = label_of(choice)
    rounds = cfg.rounds
    current: StateDict | None = None  # the round's start (None: the base)
    last = Branches()
    stats: dict = {}
    for r in range(1, rounds + 1):
        stage = round_stage(label, r)
        teams = state.usable(stage)
        todo = [t for t in teams if not branch_stored(state, t, stage)]
        ask_round(state, transport, label, r, current, last.heads, todo)
        last = Branches()
        load_branches(state, stage, last)
        deltas = {t: d for t, d in last.deltas.items() if t in state.roster.active}
        if not deltas:
            log.warning("federated: %s round %d: no team left; anchor skipped", label, r)
            return
        begin = current if current is not None else state.base_state
        spec = choice.spec(choice.candidates()[0], cfg.seed)
        current, stats = merge_states_with_report(begin, deltas, spec, progress=True)
        try:
            check_finite(current, f"federated {label} round {r}")
        except MergeError as exc:  # an anchor, not the run's merge: left out, the run goes on
            log.warning("%s; the anchor is left out of the comparison", exc)
            return
        log.info("federated: %s round %d/%d merged %d teams", label, r, rounds, len(deltas))
    assert current is not None
    state.fed[label] = last
    keep(state, label, Candidate({}, current, stats))


def ask_round(
    state: RunState,
    transport: Transport,
    label: str,
    r: int,
    current: StateDict | None,
    heads: dict[str, StateDict],
    todo: list[str],
) -> None:
    """Round ``r`` of an anchor: every team without a stored reply trains from ``current``."""
    cfg = state.config
    stage = round_stage(label, r)
    start = codec.encode_dense(current) if current is not None else None
    sent = codec.payload_nbytes(start) if start is not None else 0

    def build(team: str) -> TrainRequest:
        state.count(team, stage, sent=sent, received=0)
        return TrainRequest(
            settings=state.settings(*cfg.round_budget(after_probe=False)),
            round=r,
            rounds=cfg.rounds,
            branch=stage,
            head_from=round_stage(label, r - 1) if r > 1 else "",
            masked_lr_scale=1.0,
            budget_epochs=cfg.epochs,
            budget_max_steps=cfg.max_steps,
            own_from="",  # an anchor's teams train unmasked: they get the dense merge
            start_fingerprint="",
            downlink_dtype="fp32",
            start=start,
            head=codec.encode_dense(heads[team]) if heads.get(team) else None,
        )

    for team, reply in send(state, transport, stage, build, BranchReply, teams=todo).items():
        store_branch(state, team, stage, reply, None)
