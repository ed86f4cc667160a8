"""Stage 5, EVAL: each team scores every kept merge on its own held-out data; only metrics return.

A method given as a grid is first chosen here: each candidate merge is scored on the teams'
validation splits (their heads as trained, no re-fit) and the best mean wins; only that one is
scored on test. With ``score-validation`` a method without a grid is scored on validation too
(a grid of one). With ``refit-epochs`` > 0 each team re-fits its own head on the frozen merged
encoder before the test score, the same for every method. Stored scores are read back on a
restart, never asked for again.
"""

from __future__ import annotations

import logging
import math
import statistics

from medusa_fed import codec
from medusa_fed.codec.downlink import fingerprint
from medusa_fed.deltas import StateDict
from medusa_fed.errors import MedusaError, PayloadError
from medusa_fed.merging.spec import MergeChoice
from medusa_fed.pipeline.downlink import lacking
from medusa_fed.pipeline.merge import Candidate, branch_of, choices, keep, merge_one, slug
from medusa_fed.pipeline.state import Branches, RunState, send
from medusa_fed.pipeline.transport import Transport
from medusa_fed.protocol import EvalReply, EvalRequest, Split
from medusa_fed.protocol import finite_metrics as finite

log = logging.getLogger(__name__)


def merge_and_choose(state: RunState, transport: Transport) -> None:
    """MERGE every method; a grid's candidates are chosen on validation as they are merged."""
    for choice, branches in choices(state):
        candidates = choice.candidates()
        if len(candidates) == 1 and not state.config.score_validation:
            only = merge_one(state, choice, branches, candidates[0])
            if only is not None:
                keep(state, choice.label, only)
            continue
        best = choose(state, transport, choice, branches)
        if best is not None:
            keep(state, choice.label, best)


def choose(
    state: RunState, transport: Transport, choice: MergeChoice, branches: Branches
) -> Candidate | None:
    """The candidate of ``choice`` with the best mean validation score over the teams."""
    rel = f"eval/{slug(choice.label)}/validation.json"
    if state.run_dir.exists(rel, verify=True):  # chosen before a restart: merge that one again
        stored = state.run_dir.read_json(rel)
        state.validation[choice.label] = float(stored["chosen"]["score"])
        return merge_one(state, choice, branches, dict(stored["chosen"]["params"]))
    best: tuple[float, Candidate] | None = None
    tried = []
    for params in choice.candidates():
        candidate = merge_one(state, choice, branches, params)
        if candidate is None:  # no branch to merge, or a candidate with inf / NaN weights
            continue
        scores = ask(state, transport, choice.label, candidate.merged, "validation", None)
        if not scores:  # every team failed to score it (they are left out): nothing to compare
            continue
        score = statistics.fmean(_score(m) for m in scores.values())
        log.info("eval: %s %s validation score %.4f", choice.label, params, score)
        tried.append({"params": params, "score": score, "teams": scores})
        if best is None or score > best[0]:
            best = (score, candidate)
    if best is None:
        return None
    chosen = {"params": best[1].params, "score": best[0]}
    state.run_dir.write_json(rel, {"candidates": tried, "chosen": chosen})
    state.validation[choice.label] = best[0]
    return best[1]


def _score(metrics: dict[str, float]) -> float:
    """Higher is better: accuracy for a classifier, minus the loss for a language model."""
    return metrics["accuracy"] if "accuracy" in metrics else -metrics.get("loss", math.inf)


def evaluate(state: RunState, transport: Transport) -> None:
    """Test scores of every kept merge (after the head re-fit, if any)."""
    for label, merged in state.merged.items():
        scores = state.eval_metrics.setdefault(label, {})
        todo = []
        for team in state.usable("eval"):
            rel = f"eval/{slug(label)}/{team}.json"
            if state.run_dir.exists(rel, verify=True):
                scores[team] = state.run_dir.read_json(rel)
            else:
                todo.append(team)
        if todo:
            scores |= ask(state, transport, label, merged, "test", todo)


def ask(
    state: RunState,
    transport: Transport,
    label: str,
    merged: StateDict,
    split: Split,
    teams: list[str] | None,
) -> dict[str, dict[str, float]]:
    """One EVAL exchange: the merged shared weights to each team, its metrics back. On test,
    each reply is stored (and a re-fitted head beside it).

    A team gets nothing heavy when it holds these weights already (the last merge of this
    method it scored, by fingerprint), only the values it lacks of the run's Medusa merge
    (``downlink = lacking``), else the dense weights (and the dense weights whenever its site
    cannot rebuild them)."""
    branch, branches = branch_of(state, label)
    heads = branches.heads
    arrays = codec.encode_dense(merged)
    sha = fingerprint(merged)
    refit = state.config.refit_epochs if split == "test" else 0.0
    sent: dict[str, int] = {}
    light = state.config.downlink == "lacking"

    def build(team: str, dense: bool = False) -> EvalRequest:
        head = heads.get(team)  # the team's own head, if it shared one (a restarted site)
        held = light and not dense and state.held.get((team, label)) == sha
        held = held and team not in state.forgetful
        lack = None
        if not dense and not held and branch == "train":
            lack = lacking(state, team, merged, branches.deltas.get(team), "fp32", sha)
        full = None if held or lack is not None else arrays
        mask = codec.encode_mask(state.ownership.mask(team)) if lack and state.ownership else None
        parts = (full, mask, lack.payload if lack else None)
        sent[team] = sent.get(team, 0) + sum(codec.payload_nbytes(p) for p in parts if p)
        return EvalRequest(
            settings=state.settings(),
            method_label=label,
            branch=branch,
            refit_epochs=refit,
            refit_lr=state.config.refit_lr,
            split=split,
            fingerprint=sha,
            own_from="train" if lack else "",
            shared=full,
            lack=lack.payload if lack else None,
            mask=mask,
            head=codec.encode_dense(head) if head else None,
        )

    def dense(team: str) -> EvalRequest:
        if light and state.held.get((team, label)) == sha and team not in state.forgetful:
            # its site forgot the merge it scored (a deployment starts a ClientApp process per
            # message): later merges go to it without the light round trip first
            log.info("eval: team %r does not keep merges between requests", team)
            state.forgetful.add(team)
        return build(team, dense=True)

    replies = send(state, transport, "eval", build, EvalReply, teams=teams, fallback=dense)
    out: dict[str, dict[str, float]] = {}
    for team, reply in replies.items():
        try:
            metrics = finite(reply.metrics)
        except PayloadError as exc:
            state.drop(team, "eval", f"metrics rejected: {exc}")
            continue
        out[team] = metrics
        state.held[team, label] = sha  # the site keeps the last merge it scored
        if split != "test":
            continue
        try:
            head = _refit_head(state, team, reply, heads.get(team)) if refit > 0 else None
        except MedusaError as exc:  # the metrics stand; only the head is not kept
            state.reject(team, "eval", f"re-fitted head rejected: {exc}")
            head = None
        if head:
            state.run_dir.write_tensors(f"eval/{slug(label)}/{team}.head.safetensors", head)
        state.run_dir.write_json(f"eval/{slug(label)}/{team}.json", metrics)
        entry = state.bytes.setdefault(team, {}).setdefault(
            "eval", {"sent": 0, "received": 0, "dense_fp32": 0}
        )
        entry["sent"] += sent[team]
        entry["dense_fp32"] += codec.dense_fp32_nbytes(state.shapes)
    return out


def _refit_head(
    state: RunState, team: str, reply: EvalReply, head: StateDict | None
) -> StateDict | None:
    """The head a team re-fitted on a merged model, checked against the shapes of the head it
    trained with when the coordinator has it."""
    if reply.head is None:
        return None
    shapes = {n: tuple(t.shape) for n, t in head.items()} if head else None
    return codec.decode_dense(reply.head, shapes, team=team, max_bytes=state.max_payload_bytes)
