"""Post-hoc merges of stored branches, and export of any stored object as a model directory.

``merge_branches(store, ["e0ae43e0", "a5243247", "948faf8d"], MergeSpec("ties"))`` merges those
branches onto their common start with any method of :mod:`medusa_fed.merging` and records the
merge; :func:`export_object` writes a ``from_pretrained``-loadable Hugging Face directory (or a
PEFT adapter directory for LoRA / IA3) of a branch or a merge, with one team's head.

Branches are keyed by team name in the merge (the run's own merge does the same), so summation
order and DARE seeds match the run's: merging a run's branches again with the run's method and
settings gives its merged weights bit for bit (and, the object being content-addressed, the same
merge id). Two branches of one team get ``team@<short id>`` keys.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from medusa_fed.deltas import StateDict
from medusa_fed.errors import ConfigError, MergeError, StoreError
from medusa_fed.history.branches import Store
from medusa_fed.history.db import ObjectRow
from medusa_fed.history.objects import add_merge
from medusa_fed.history.values import base_model, delta_of, head_of, labels_of, values_of
from medusa_fed.merging import (
    OWNERSHIP_METHODS,
    TUNABLE,
    MergeChoice,
    MergeSpec,
    check_finite,
    merge_states_with_report,
)

log = logging.getLogger(__name__)

PROVENANCE = "medusa.json"
_SPEC_KEYS = TUNABLE


@dataclass(frozen=True)
class MergeOutcome:
    """A recorded merge: its id, whether it was new, the merged values and the merge report."""

    id: str
    new: bool
    values: StateDict
    report: dict[str, Any]


def make_spec(method: str, **settings: float) -> MergeSpec:
    """A MergeSpec from a method as typed (``dare-ties``, ``ties:density=0.5``: the one parser,
    :meth:`MergeChoice.parse`) and settings given apart (CLI flags, a config's ``parameters``)."""
    choice = MergeChoice.parse(method)
    grid = [k for k, values in choice.params if len(values) > 1]
    if grid:
        raise ConfigError(
            f"{method!r}: expected one value per setting, found a grid for {grid}; a grid is "
            "chosen on the teams' validation data, which only a run has (--compare in a run)"
        )
    inline = {k: values[0] for k, values in choice.params}
    twice = sorted(set(inline) & set(settings))
    if twice:
        raise ConfigError(f"{method!r}: {twice} given both in the method text and apart")
    return choice.spec({**inline, **settings}, seed=int(settings.get("seed", 0)))


def spec_label(spec: MergeSpec) -> str:
    """The run config's label of ``spec``: ``ties`` or ``ties:density=0.5`` (the settings it
    reads that are not the default)."""
    defaults = {f.name: f.default for f in fields(MergeSpec)}
    changed = tuple(
        (k, (float(getattr(spec, k)),)) for k in spec.info.uses if getattr(spec, k) != defaults[k]
    )
    return MergeChoice(spec.method, changed).label


def check_output_dir(out: Path, force: bool) -> None:
    """An export target must be a folder that is new or empty, unless ``force``: a model a user
    already has is never overwritten by accident."""
    if out.exists() and not out.is_dir():
        raise ConfigError(
            f"-o {out}: expected a folder for the model, found a file; nothing written"
        )
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ConfigError(
            f"-o {out}: expected a new or empty folder, found one holding files (a model?); "
            "nothing written. Pass --force to overwrite it, or choose another folder"
        )


def load_merge_config(path: Path) -> tuple[list[str], MergeSpec, str | None]:
    """Branches, spec and head team of a mergekit-style YAML file::

    merge_method: ties            # or method:
    parameters: {density: 0.2, scale: 1.0}
    models:                       # or branches: [e0ae43e0, a5243247]
      - model: e0ae43e0
      - model: a5243247
    head: alpha                   # optional: the team head of the exported model
    """
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: expected a readable YAML merge config ({e})") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top, found {type(raw).__name__}")
    unknown = sorted(
        set(raw)
        - {
            "merge_method",
            "method",
            "parameters",
            "models",
            "branches",
            "head",
            "dtype",
            "base_model",
        }
    )
    if unknown:
        raise ConfigError(
            f"{path}: unknown keys {unknown}; expected merge_method, parameters, "
            "models (or branches), head"
        )
    method = str(raw.get("merge_method") or raw.get("method") or "")
    items = raw.get("models") or raw.get("branches") or []
    refs: list[str] = []
    for item in items:
        if isinstance(item, dict):
            if item.get("parameters"):
                raise ConfigError(
                    f"{path}: per-model parameters ({item}) are not supported; "
                    "put settings under the top-level parameters"
                )
            item = item.get("model") or item.get("branch")
        refs.append(str(item))
    params = dict(raw.get("parameters") or {})
    bad = sorted(set(params) - set(_SPEC_KEYS))
    if bad:
        raise ConfigError(f"{path}: parameters {bad} unknown; expected some of {_SPEC_KEYS}")
    if not method or not refs:
        raise ConfigError(
            f"{path}: expected merge_method and at least one model/branch id, "
            f"found method={method!r}, {len(refs)} branch(es)"
        )
    head = raw.get("head")
    return refs, make_spec(method, **params), None if head is None else str(head)


def resolve_branches(store: Store, refs: Sequence[str]) -> list[ObjectRow]:
    """Branch rows for ``refs``: id prefixes, or ``RUN:train`` / ``RUN:baseline`` for all of a
    run's masked / unmasked branches (``RUN`` a run id prefix or ``latest``)."""
    rows: list[ObjectRow] = []
    for ref in refs:
        if ":" in ref:
            run_ref, _, stage = ref.partition(":")
            if stage not in ("train", "baseline"):
                raise StoreError(f"{ref!r}: expected RUN:train or RUN:baseline")
            runs = store.db.objects("run")
            if run_ref == "latest" and not runs:
                raise StoreError(f"{ref!r}: no run imported in {store.root} yet")
            run = runs[-1] if run_ref == "latest" else store.resolve(run_ref, "run")
            ids = [
                i
                for k, i in sorted(run.meta.get("objects", {}).get("branches", {}).items())
                if k.startswith(stage + "/")
            ]
            if not ids:
                raise StoreError(f"{ref!r}: run {run.short} has no {stage} branches")
            rows += [store.get(i) for i in ids]
        else:
            rows.append(store.resolve(ref, "branch"))
    if len({r.id for r in rows}) != len(rows):
        raise MergeError(f"branch list {list(refs)} names a branch twice; merge not run")
    return rows


def merge_branches(
    store: Store,
    refs: Sequence[str],
    spec: MergeSpec,
    model: str | None = None,
    progress: bool = True,
) -> MergeOutcome:
    """Merge stored branches onto their common start with ``spec`` and record the merge.

    Uncontrolled branches (teams that refused masks) get sign election under ``medusa``, as in
    the run. Raises MergeError if the branches start from different objects.
    """
    rows = resolve_branches(store, refs)
    starts = {r.meta["start"] for r in rows}
    if len(starts) != 1:
        listed = ", ".join(f"{r.short} from {r.meta['start'][:8]}" for r in rows)
        raise MergeError(
            f"expected branches that share one start, found {listed}; merge "
            "branches of one base (or of one earlier merge) at a time"
        )
    start = store.get(starts.pop())
    teams = [r.name for r in rows]
    keys = {(r.name if teams.count(r.name) == 1 else f"{r.name}@{r.short}"): r for r in rows}
    uncontrolled = [
        k
        for k, r in keys.items()
        if r.meta["training"] == "uncontrolled" and spec.method in OWNERSHIP_METHODS
    ]
    base_values = values_of(store, start, model)
    deltas = {k: delta_of(store, r) for k, r in keys.items()}
    merged, report = merge_states_with_report(base_values, deltas, spec, uncontrolled, progress)
    check_finite(merged, f"merge {spec_label(spec)}")
    totals = report["totals"]
    conflicts = {
        "elements_touched_by_2plus": int(totals["overlap"]),
        "share": int(totals["overlap"]) / max(int(totals["numel"]), 1),
        "sign_elected": int(totals["sign_elected"]),
        "discarded": int(totals["discarded"]),
    }
    before = {r.id for r in store.db.objects("merge")}
    merge_id = add_merge(
        store,
        start.id,
        {k: r.id for k, r in keys.items()},
        asdict(spec),
        merged,
        label=spec_label(spec),
        uncontrolled=uncontrolled,
        conflicts=conflicts,
    )
    return MergeOutcome(merge_id, merge_id not in before, merged, report)


def export_object(
    store: Store,
    ref: str,
    out: Path,
    head: str | None = None,
    model: str | None = None,
    merged_adapter: bool = False,
    force: bool = False,
) -> Path:
    """Write a branch or merge as a Hugging Face directory (PEFT adapter dir for LoRA / IA3).

    Parameters
    ----------
    head : str | None (default: None)
        Merge only: the team (a key of the merge's inputs) whose head goes in; default the
        first team that shared one.
    merged_adapter : bool (default: False)
        LoRA / IA3: fold the adapter into the weights and write a plain model.
    force : bool (default: False)
        Write into ``out`` even if it already holds files (a model there is overwritten).
    """
    from medusa_fed.training.export import save_model_dir

    check_output_dir(out, force)
    row = store.resolve(ref, ("branch", "merge", "base"))
    base = base_model(store, row, model)
    team_branch = _head_branch(store, row, head) if row.kind != "base" else None
    if team_branch is None and base.is_classifier:
        raise StoreError(
            f"{row.kind} {row.short} carries no team head for a classifier; export "
            "a branch, or a merge with --head TEAM of a team that shared its head"
        )
    shared = values_of(store, row, model)
    head_values = head_of(store, team_branch) if team_branch is not None else {}
    labels = labels_of(team_branch) if team_branch is not None and base.is_classifier else None
    save_model_dir(base, out, shared, head_values or None, labels=labels, merged=merged_adapter)
    provenance = {
        "id": row.id,
        "kind": row.kind,
        "name": row.name,
        "store": str(store.root),
        "head_from": team_branch.id if team_branch is not None else None,
        "base_fingerprint": base.fingerprint(),
    }
    (out / PROVENANCE).write_text(json.dumps(provenance, indent=2) + "\n")
    return out


def _head_branch(store: Store, row: ObjectRow, head: str | None) -> ObjectRow | None:
    if row.kind == "branch":
        if head not in (None, row.name):
            raise StoreError(
                f"branch {row.short} is team {row.name!r}'s; --head {head!r} does "
                "not apply (heads come with their branch)"
            )
        return row
    inputs: Mapping[str, str] = row.meta["inputs"]
    candidates = {k: store.get(i) for k, i in inputs.items()}
    with_head = {k: r for k, r in candidates.items() if r.meta["blobs"].get("head")}
    if head is None and with_head:
        return with_head[sorted(with_head)[0]]
    if head in with_head:
        return with_head[head]
    start = store.get(row.meta["start"])  # a join merge: the earlier merge's teams' heads
    found = _head_branch(store, start, head) if start.kind == "merge" else None
    if found is None and head is not None:
        raise StoreError(
            f"merge {row.short}: --head {head!r} is not a team with a shared head "
            f"among {sorted(with_head) or 'none'}"
        )
    return found


__all__ = [
    "MergeOutcome",
    "export_object",
    "load_merge_config",
    "merge_branches",
    "resolve_branches",
    "spec_label",
]
