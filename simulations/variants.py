"""Named Medusa variants the benchmark compares (``medusa bench --variants a,b``).

The paper's recipe is ``proportional``; the others change one thing each:

- ``argmax`` / ``balanced``: the owner policy (the largest probe delta wins / near-equal shares);
- ``uncontrolled``: the setting's last team refuses masks (sign election on its overlaps);
- ``frozen``: elements no probe selected stay at the base instead of going to a random team, so
  each team trains only the elements its own probe ranked;
- ``frozen-d50``: the same with a denser probe (top 50%);
- ``scaled``: base + lambda * sum of owned deltas, lambda chosen on validation;
- ``rounds2`` / ``rounds4``: the same total epochs split into R rounds; after each round the
  coordinator merges and every team continues masked training of its own elements from the merge
  (and its own head), so it adapts to the others' changes;
- ``refit`` / ``rounds2-refit`` / ``rounds4-refit`` / ``rounds8-refit``: after the final merge each
  team re-fits its own head (encoder frozen) on the merged encoder for one epoch; the benchmark
  then also reports the best post-hoc baseline with the same head re-fit (``<method>+refit``), so
  the comparison stays fair;
- ``argmax-`` / ``balanced-`` / ``frozen-rounds4-refit``: the default with one of the knobs above;
- ``rounds4-refit-lr2`` / ``-lr0.5``: the default with masked training at twice / half the lr (a
  one-third mask moves a third of the elements; does a larger step make up for it?);
- ``rounds4-refit2``: the default with a 2-epoch head re-fit (the best baseline gets the same).
- ``warm-refit`` / ``warm-rounds2-refit`` / ``warm-rounds4-refit``: warm start. The probe is the
  branch's first epoch: round 1 starts from base + every team's probe values on the elements it
  owns (the coordinator holds them already) with the probe's head, and the rounds train the rest
  of the budget (epochs - probe epochs), so a Medusa team trains exactly as long as a baseline
  branch instead of a probe epoch longer.
- ``warm-rounds2-refit-mlr2`` / ``-mlr3`` / ``-mlr4``: the warm default with masked training's
  shared-tensor lr at 2 / 3 / 4 times the lr (the head's lr unchanged; the coordinator's
  ``masked-lr-scale``). A team trains only its owned share of the elements (about 1 / teams):
  in quick mode's 32 steps each masked element's step is the bottleneck, not the interference.
- ``warm-rounds2-refit-isolated`` / ``-mlr3-isolated`` (a diagnostic, not a merge): each team's
  branch of the warm default (or its 3x variant) scored on base + that branch alone, head
  re-fitted: what the mask costs a team without the other teams' changes.
"""

from __future__ import annotations

from .benchmark import MedusaVariant

SCALES = (0.7, 1.0, 1.3, 1.6)

VARIANTS: dict[str, MedusaVariant] = {
    v.name: v
    for v in (
        MedusaVariant("proportional"),
        MedusaVariant("argmax", policy="argmax"),
        MedusaVariant("balanced", policy="balanced"),
        MedusaVariant("uncontrolled", uncontrolled_last=True),
        MedusaVariant("frozen", unselected="frozen"),
        MedusaVariant("frozen-d50", unselected="frozen", density=0.5),
        MedusaVariant("scaled", scales=SCALES),
        MedusaVariant("rounds2", rounds=2),
        MedusaVariant("rounds4", rounds=4),
        MedusaVariant("refit", refit_epochs=1.0),
        MedusaVariant("rounds2-refit", rounds=2, refit_epochs=1.0),
        MedusaVariant("rounds4-refit", rounds=4, refit_epochs=1.0),
        MedusaVariant("rounds8-refit", rounds=8, refit_epochs=1.0),
        MedusaVariant("argmax-rounds4-refit", policy="argmax", rounds=4, refit_epochs=1.0),
        MedusaVariant("balanced-rounds4-refit", policy="balanced", rounds=4, refit_epochs=1.0),
        MedusaVariant("frozen-rounds4-refit", unselected="frozen", rounds=4, refit_epochs=1.0),
        MedusaVariant("rounds4-refit-lr2", rounds=4, refit_epochs=1.0, lr_scale=2.0),
        MedusaVariant("rounds4-refit-lr0.5", rounds=4, refit_epochs=1.0, lr_scale=0.5),
        MedusaVariant("rounds4-refit2", rounds=4, refit_epochs=2.0),
        MedusaVariant("warm-refit", warm_start=True, refit_epochs=1.0),
        MedusaVariant("warm-rounds2-refit", warm_start=True, rounds=2, refit_epochs=1.0),
        MedusaVariant("warm-rounds4-refit", warm_start=True, rounds=4, refit_epochs=1.0),
        *(
            MedusaVariant(
                f"warm-rounds2-refit-mlr{k}",
                warm_start=True,
                rounds=2,
                refit_epochs=1.0,
                masked_lr_scale=float(k),
            )
            for k in (2, 3, 4)
        ),
        *(
            MedusaVariant(
                f"warm-rounds2-refit{suffix}-isolated",
                warm_start=True,
                rounds=2,
                refit_epochs=1.0,
                masked_lr_scale=k,
                isolated=True,
            )
            for suffix, k in (("", 1.0), ("-mlr3", 3.0))
        ),
    )
}


def default_variants() -> tuple[MedusaVariant, ...]:
    """Quick mode: the coordinator's default (warm start, 2 rounds, head re-fit) against every
    baseline, which keeps it under 15 minutes on 2 cores; add the paper's one-shot recipe and
    the earlier default with ``--variants proportional,rounds4-refit,warm-rounds2-refit``.
    ``--mode full`` runs every variant, the uncontrolled team included."""
    return (VARIANTS["warm-rounds2-refit"],)
