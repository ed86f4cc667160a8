"""Stage 4, MERGE: the run's merge and every compared method, from the stored branches.

Medusa merges the masked branches (TRAIN); a compared post-hoc method merges the unmasked ones
(FREE). A method given as a grid (``ties:scale=0.5|1``) is merged once per candidate, each scored
on the teams' validation splits before the next is merged (:func:`medusa_fed.pipeline.evaluate.
choose`), so memory holds two merges at most.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass

from medusa_fed.deltas import StateDict
from medusa_fed.errors import MergeError
from medusa_fed.merging import check_finite, merge_states_with_report
from medusa_fed.merging.spec import OWNERSHIP_METHODS, MergeChoice
from medusa_fed.pipeline.state import Branches, RunState

log = logging.getLogger(__name__)


@dataclass
class Candidate:
    """One merge of one method's settings, not yet chosen."""

    params: dict[str, float]
    merged: StateDict
    stats: dict


def slug(label: str) -> str:
    """A directory name for a method label: ``ties:density=0.2`` -> ``ties-density0.2``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", label.replace("=", "")).strip("-")


def choices(state: RunState) -> list[tuple[MergeChoice, Branches]]:
    """Each method the run merges, with the branches it merges."""
    cfg = state.config
    if not cfg.uses_ownership:
        return [(cfg.merge, state.free)]
    return [(cfg.merge, state.masked), *((c, state.free) for c in cfg.compare)]


def branch_of(state: RunState, label: str) -> tuple[str, Branches]:
    """The branch whose heads score a merge, and its branches: ``train`` for the run's Medusa
    merge, ``baseline`` for the post-hoc ones, a federated anchor's last round for it."""
    if label in state.fed:  # the stage name of its last round (pipeline.federated.round_stage)
        return f"{slug(label)}-round{state.config.rounds}", state.fed[label]
    if state.config.uses_ownership and label == state.config.merge.label:
        return "train", state.masked
    return "baseline", state.free


def merge_one(
    state: RunState, choice: MergeChoice, branches: Branches, params: dict[str, float]
) -> Candidate | None:
    """Merge the active teams' branches with one candidate of ``choice`` (None: no branch)."""
    deltas = {t: d for t, d in branches.deltas.items() if t in state.roster.active}
    if not deltas:
        log.warning("merge: no branch to merge for %s", choice.label)
        return None
    uncontrolled = [t for t in state.roster.active if not state.roster.controlled(t)]
    merged, stats = merge_states_with_report(
        state.base_state,
        deltas,
        choice.spec(params, state.config.seed),
        uncontrolled=uncontrolled if choice.method in OWNERSHIP_METHODS else (),
        progress=True,
    )
    try:
        check_finite(merged, f"merge {choice.label} {params or ''}".rstrip())
    except MergeError as exc:
        if choice.label == state.config.merge.label:
            raise  # the run's own merge: nothing to export
        log.warning("%s; the method is left out of the comparison", exc)
        return None
    log.info("merge: %s %s merged %d branches", choice.label, params or "", len(deltas))
    return Candidate(params, merged, stats)


def keep(state: RunState, label: str, chosen: Candidate) -> None:
    """Record the merge kept for ``label`` and store its shared weights."""
    state.merged[label] = chosen.merged
    state.merge_stats[label] = chosen.stats
    state.chosen[label] = chosen.params
    state.run_dir.write_tensors(
        f"merged/{slug(label)}/shared.safetensors",
        chosen.merged,
        metadata={
            "fingerprint": state.fingerprint,
            "method": label,
            "params": json.dumps(chosen.params, sort_keys=True),
        },
    )
