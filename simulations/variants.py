"""Named Medusa variants the benchmark compares (``medusa bench --variants a,b``).

A variant is a set of run-config overrides on the coordinator's defaults (warm start, 2 rounds,
a 1-epoch head re-fit): exactly what a coordinator would run with those keys.

- ``default``: the coordinator's default (earlier called ``warm-rounds2-refit``);
- ``paper``: the paper's one-shot recipe (probe, assign, one masked fine-tune, no re-fit);
- ``argmax`` / ``balanced``: the owner policy (the largest probe delta wins / near-equal shares);
- ``frozen``: elements no probe selected stay at the base instead of going to a random team;
- ``frozen-d50``: the same with a denser probe (top 50%);
- ``uncontrolled``: the setting's last team refuses masks (sign election on its overlaps);
- ``scaled``: base + lambda * sum of owned deltas, lambda chosen on validation;
- ``rounds1`` / ``rounds4``: the warm start with 1 / 4 rounds instead of 2;
- ``cold``: no warm start (the probe is not counted in the branch), 2 rounds;
- ``no-refit``: the default without the head re-fit (every compared merge then has none either);
- ``mlr2`` / ``mlr3`` / ``mlr4``: masked training's shared-tensor lr at 2 / 3 / 4 times the lr;
- ``mlr-choice``: each team trains every round at 1, 2 and 3 times the lr and keeps the branch its
  own validation split scores best (``masked-lr-choices``: a step per team, three fine-tunes per
  round at each team);
- ``fisher``: probe entries ranked and weighed by sqrt(Fisher) x |delta| (``probe-scores``)
  instead of |delta|: an element goes to the team whose loss depends on it most;
- ``tsv-owned``: the owned deltas merged TSV-style (``medusa_tsv``: TSV-M on every weight matrix,
  Algorithm 3 on the rest), lambda 1, 1.5 or 2 chosen on validation;
- ``lora-rank`` (``--method lora`` only): whole LoRA rank components per owner instead of
  adapter elements;
- ``row`` (not ``--method ia3``): whole rows of each weight matrix per owner (each team's update
  of a matrix acts on its own output neurons), vectors by element.

Two variants of earlier benchmarks are gone because no coordinator setting expresses them: the
``lr_scale`` variants (every Medusa branch, uncontrolled ones included, at a scaled lr) and the
``isolated`` diagnostics (each team scored on base + its own branch, which is not a merge).
"""

from __future__ import annotations

from .benchmark import MedusaVariant

PAPER = (("rounds", 1), ("warm-start", False), ("refit-epochs", 0.0))

VARIANTS: dict[str, MedusaVariant] = {
    v.name: v
    for v in (
        MedusaVariant("default"),
        MedusaVariant("paper", PAPER),
        MedusaVariant("argmax", (("assignment", "argmax"),)),
        MedusaVariant("balanced", (("assignment", "balanced"),)),
        MedusaVariant("frozen", (("unselected", "frozen"),)),
        MedusaVariant("frozen-d50", (("unselected", "frozen"), ("probe-density", 0.5))),
        MedusaVariant("uncontrolled", uncontrolled_last=True),
        MedusaVariant("scaled", (("merge", "medusa:scale=0.7|1|1.3|1.6"),)),
        MedusaVariant("tsv-owned", (("merge", "medusa_tsv:scale=1|1.5|2"),)),
        MedusaVariant("rounds1", (("rounds", 1),)),
        MedusaVariant("rounds4", (("rounds", 4),)),
        MedusaVariant("cold", (("warm-start", False),)),
        MedusaVariant("no-refit", (("refit-epochs", 0.0),)),
        *(MedusaVariant(f"mlr{k}", (("masked-lr-scale", float(k)),)) for k in (2, 3, 4)),
        MedusaVariant("mlr-choice", (("masked-lr-choices", "1|2|3"),)),
        MedusaVariant("fisher", (("probe-scores", "fisher"),)),
        MedusaVariant("lora-rank", (("ownership-unit", "lora-rank"),)),  # --method lora only
        MedusaVariant("row", (("ownership-unit", "row"),)),  # not --method ia3
    )
}


def default_variants() -> tuple[MedusaVariant, ...]:
    """Quick mode: the coordinator's default against every compared merge (about 15 minutes on
    2 cores); add others with ``--variants default,paper,...``; ``--mode full`` runs them all."""
    return (VARIANTS["default"],)
