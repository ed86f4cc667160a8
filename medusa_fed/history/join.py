"""A new team joins after a merge: it owns elements nobody owns, trains them, merges onto it.

The earlier merge's ownership map left some elements with :data:`NO_OWNER` (``unselected =
frozen``: no probe selected them, so they stayed at the base). The joining team gets

- ``policy="free"``: exactly those elements; or
- ``policy="take"``: those plus a seeded random ``take`` fraction of every earlier team's
  elements (their merged values become the newcomer's starting point there; the earlier teams'
  learned values are kept in the merge, only further changes move to the newcomer).

It fine-tunes under that mask starting from the merged values
(:func:`medusa_fed.training.branch.finetune` with ``start=merged``), so its delta is zero outside
its elements and ``merged + delta`` is again a conflict-free three-way merge. The store records
the extended ownership map (``previous`` = the old one), the branch (``start`` = the merge) and
the new merge (``start`` = the old merge), so ``medusa log`` draws them under the old merge.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Literal

import torch

from medusa_fed.errors import OwnershipError, StoreError
from medusa_fed.history.branches import Store
from medusa_fed.history.db import ObjectRow
from medusa_fed.history.describe import ownership_of
from medusa_fed.history.objects import add_branch, add_merge, add_ownership
from medusa_fed.history.values import base_model, values_of
from medusa_fed.merging import MergeSpec, merge_states_with_report
from medusa_fed.ownership.ownership_map import NO_OWNER, OwnershipMap

if TYPE_CHECKING:
    from medusa_fed.training.config import TrainConfig
    from medusa_fed.training.data import TaskData

log = logging.getLogger(__name__)

JoinPolicy = Literal["free", "take"]


@dataclass(frozen=True)
class JoinResult:
    """Ids the join recorded, and the new team's share of all elements."""

    ownership: str
    branch: str
    merge: str
    owned_share: float
    metrics: dict[str, float]


def merge_ownership(store: Store, merge: ObjectRow) -> ObjectRow:
    """The ownership map the masked branches of ``merge`` trained under (one map)."""
    branches = [store.get(i) for i in merge.meta["inputs"].values()]
    maps = {b.meta.get("ownership") for b in branches if b.meta.get("training") == "masked"}
    maps.discard(None)
    if len(maps) != 1:
        raise StoreError(
            f"merge {merge.short}: expected masked branches under one ownership map, found "
            f"{len(maps)} maps; a team can join only after a Medusa merge (not a post-hoc one)"
        )
    return store.get(str(maps.pop()))


def extend_ownership(
    ownership: OwnershipMap,
    team: str,
    policy: JoinPolicy = "free",
    take: float = 0.0,
    seed: int = 0,
) -> OwnershipMap:
    """``ownership`` plus ``team``, who gets the NO_OWNER elements (and, ``policy="take"``, a
    seeded ``take`` fraction of every other team's elements)."""
    if team in ownership.teams or team in ownership.uncontrolled:
        raise OwnershipError(f"team {team!r} is already in the ownership map; pick a new name")
    if policy not in ("free", "take") or not 0.0 <= take < 1.0 or (policy == "take") != (take > 0):
        raise OwnershipError(
            f"expected policy 'free' (take = 0) or 'take' with 0 < take < 1, "
            f"found policy={policy!r}, take={take}; nothing assigned"
        )
    new_id = len(ownership.teams)
    gen = torch.Generator().manual_seed(int(seed))
    owners: dict[str, torch.Tensor] = {}
    for name in sorted(ownership.owners):
        ids = ownership.owners[name].clone()
        grab = ids == NO_OWNER
        if policy == "take":
            grab |= (ids != NO_OWNER) & (torch.rand(ids.shape, generator=gen) < take)
        ids[grab] = new_id
        owners[name] = ids
    extended = OwnershipMap((*ownership.teams, team), owners, ownership.uncontrolled)
    if extended.owned_count(team) == 0:
        raise OwnershipError(
            f"team {team!r} would own 0 elements: every element already has an owner (the run "
            "used unselected = random); use policy 'take' with take > 0, or runs with "
            "unselected = frozen"
        )
    return extended


def join_after_merge(
    store: Store,
    merge_ref: str,
    team: str,
    data: TaskData,
    cfg: TrainConfig,
    policy: JoinPolicy = "free",
    take: float = 0.0,
    model: str | None = None,
    evaluate_after: bool = True,
) -> JoinResult:
    """Let ``team`` join after the merge ``merge_ref`` (see the module docstring).

    Parameters
    ----------
    data : TaskData
        The new team's data (trains on ``data.train``; scored on ``data.test``). Only its
        description (name, labels, sizes) is stored.
    cfg : TrainConfig
        The fine-tuning budget.
    policy : "free" | "take" (default: "free")
    take : float (default: 0.0)
        ``policy="take"``: fraction of every earlier team's elements handed over.
    evaluate_after : bool (default: True)
        Score the new merge on ``data.test`` (recorded as the merge's metrics for ``team``).
    """
    from medusa_fed.training.branch import finetune, num_labels_of, prompter_of
    from medusa_fed.training.evaluate import evaluate

    merge = store.resolve(merge_ref, "merge")
    old_map_row = merge_ownership(store, merge)
    extended = extend_ownership(ownership_of(store, old_map_row), team, policy, take, cfg.seed)
    base = base_model(store, merge, model)
    start = values_of(store, merge)
    mask = extended.mask(team)
    share = extended.owned_count(team) / max(sum(m.numel() for m in mask.values()), 1)
    log.info(
        "join: team %s owns %.1f%% of the elements after merge %s", team, 100 * share, merge.short
    )
    result = finetune(base, data, cfg, mask=mask, start=start, desc=f"join {team}")
    labels = num_labels_of(base, data)
    metrics = {f"train_{k}": float(v) for k, v in result.metrics.items()}
    merged, report = merge_states_with_report(start, {team: result.delta}, MergeSpec("medusa"))
    scores: dict[str, float] = {}
    if evaluate_after:
        scores = evaluate(
            base,
            merged,
            result.head or None,
            data.test,
            num_labels=labels,
            desc=f"evaluate {team}",
            prompter=prompter_of(base, data),
        )
        metrics.update({f"alone_{k}": v for k, v in scores.items()})
    base_id = store.base_of(merge).id
    settings = {"joined": team, "policy": policy, "take": take, "after": merge.id}
    map_id = add_ownership(store, base_id, extended, settings=settings, previous=old_map_row.id)
    description = {
        "task": data.name,
        "labels": list(data.labels),
        "train-size": len(data.train),
        "test-size": len(data.test),
    }
    branch_id = add_branch(
        store,
        team,
        merge.id,
        result.delta,
        "masked",
        base.spec.method,
        result.head,
        map_id,
        description,
        metrics,
    )
    totals = report["totals"]
    merge_id = add_merge(
        store,
        merge.id,
        {team: branch_id},
        asdict(MergeSpec("medusa")),
        merged,
        label="medusa",
        metrics={team: scores} if scores else None,
        conflicts={"elements_touched_by_2plus": int(totals["overlap"]), "share": 0.0},
    )
    return JoinResult(map_id, branch_id, merge_id, share, scores)


__all__ = ["JoinResult", "extend_ownership", "join_after_merge", "merge_ownership"]
