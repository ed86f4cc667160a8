"""Import a run directory (finished or partial) into the branch store.

What becomes what (see :mod:`strategies.medusa_strategy` for the run layout):

==================================  ==========================================================
run directory                       store
==================================  ==========================================================
config.json (model, fingerprint)    ``base`` (a reference + fingerprint + shapes) and ``run``
hello/<team>.json                   each branch's data description (task, labels, sizes)
ownership.safetensors               ``ownership`` (blob)
train/<team>.*                      ``branch`` ``masked`` (``uncontrolled`` if the team refused
                                    masks): delta blob, head blob, metrics
baseline/<team>.*                   ``branch`` ``free`` (unmasked, for post-hoc merges)
merged/<method>/shared.safetensors  ``merge`` of the run's branches (result blob, spec, teams'
                                    metrics from eval/<method>/, conflicts from report.json)
report.json                         the run's report blob
==================================  ==========================================================

A merge's branches are the teams that had a branch file and were still in the run when it
merged: status ``ok`` in report.json or left out only at ``eval``; without a report (a partial
run), every team with a branch file. Importing is idempotent: objects are content-addressed, and
a re-import only adds what the run wrote since and refreshes the ``run`` record.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medusa_fed.errors import MedusaError, StoreError
from medusa_fed.history.blobs import tensors_from_bytes
from medusa_fed.history.branches import Store, default_store_path
from medusa_fed.history.objects import (
    Training,
    add_base,
    add_branch,
    add_merge,
    add_ownership,
    add_run,
)
from medusa_fed.merging.spec import OWNERSHIP_METHODS
from medusa_fed.ownership import OwnershipMap
from medusa_fed.run_config import MergeChoice, RunConfig
from medusa_fed.rundir.manifest import now_iso
from medusa_fed.rundir.run_dir import RunDir

log = logging.getLogger(__name__)

STORE_OFF = ("off", "none", "false", "no")


@dataclass
class ImportResult:
    """Ids of what one import recorded (``branches`` keyed ``stage/team``)."""

    run: str
    base: str
    ownership: str | None = None
    branches: dict[str, str] = field(default_factory=dict)
    merges: dict[str, str] = field(default_factory=dict)
    status: str = "partial"


def import_run(
    run_dir: str | os.PathLike[str] | RunDir, store: Store | str | os.PathLike[str]
) -> ImportResult:
    """Record the run directory ``run_dir`` in ``store`` (see the module docstring).

    Parameters
    ----------
    run_dir : str | PathLike | RunDir
        A run directory; every file read is hash-checked against its manifest.
    store : Store | str | PathLike
        An open store, or its directory (created if missing).
    """
    rd = run_dir if isinstance(run_dir, RunDir) else RunDir(Path(run_dir), readonly=True)
    if not rd.exists("config.json"):
        raise StoreError(
            f"{rd.path}: expected a run directory with config.json, found none; nothing imported"
        )
    if isinstance(store, Store):
        return _import(rd, store)
    with Store(store) as opened:
        return _import(rd, opened)


def _import(rd: RunDir, store: Store) -> ImportResult:
    saved = rd.read_json("config.json")
    config = RunConfig.from_mapping(saved["run"])
    fingerprint = str(saved["fingerprint"])
    report = rd.read_json("report.json") if rd.exists("report.json") else None
    hello = {
        r.split("/")[-1][:-5]: rd.read_json(r) for r in rd.list("hello/") if r.endswith(".json")
    }
    shapes = _shapes(rd)
    base_id = add_base(
        store, fingerprint, _source(config.model), config.model_family, config.method, shapes
    )
    path = str(rd.path.resolve())
    run_meta: dict[str, Any] = {
        "config": config.to_mapping(),
        "status": "complete" if report else "partial",
        "teams": {
            t: {"controlled": bool(h.get("controlled", True)), "task": h.get("task")}
            for t, h in sorted(hello.items())
        },
        "imported_at": now_iso(),
        "report": store.blobs.put_file(rd.file_path("report.json"), rd.read_bytes("report.json"))
        if report
        else None,
        "timings_s": (report or {}).get("timings_s", {}),
        "left_out": {
            t["name"]: t["status"] for t in (report or {}).get("teams", []) if t["status"] != "ok"
        },
    }
    run_id = add_run(store, path, fingerprint, base_id, run_meta)
    result = ImportResult(run=run_id, base=base_id, status=run_meta["status"])
    if rd.exists("ownership.safetensors"):
        data = rd.read_bytes("ownership.safetensors")
        store.blobs.put_file(rd.file_path("ownership.safetensors"), data)
        ownership = OwnershipMap.load(rd.file_path("ownership.safetensors"))
        result.ownership = add_ownership(
            store,
            base_id,
            ownership,
            data,
            settings={
                "assignment": config.assignment,
                "unselected": config.unselected,
                "probe-density": config.probe_density,
                "seed": config.seed,
            },
        )
    for stage in ("train", "baseline"):
        for team in _teams_with(rd, stage):
            result.branches[f"{stage}/{team}"] = _import_branch(
                rd,
                store,
                stage,
                team,
                base_id,
                hello.get(team, {}),
                config.method,
                result.ownership,
            )
    choices = {c.label: c for c in _merge_choices(config)}
    for rel in _merged_files(rd):
        data = rd.read_bytes(rel)
        label = tensors_from_bytes(data, rel)[1].get("method", "")
        if label not in choices:
            log.warning(
                "store: %s is labelled %r, not a merge of this run's config; skipped", rel, label
            )
            continue
        result.merges[label] = _import_merge(
            rd, store, rel, data, choices[label], config, base_id, hello, report, result.branches
        )
    ids = [i for i in (result.ownership, *result.branches.values(), *result.merges.values()) if i]
    for obj_id in ids:
        store.link(obj_id, run_id, "run")
    store.update_meta(
        run_id,
        {
            "objects": {
                "ownership": result.ownership,
                "branches": result.branches,
                "merges": result.merges,
            }
        },
    )
    log.info(
        "store: imported run %s (%s) into %s: %d branches, %d merges",
        run_id[:8],
        result.status,
        store.root,
        len(result.branches),
        len(result.merges),
    )
    return result


def _import_branch(
    rd: RunDir,
    store: Store,
    stage: str,
    team: str,
    base_id: str,
    facts: dict[str, Any],
    method: str,
    ownership_id: str | None,
) -> str:
    rel = f"{stage}/{team}"
    delta = rd.read_bytes(f"{rel}.safetensors")
    store.blobs.put_file(rd.file_path(f"{rel}.safetensors"), delta)
    head = None
    if rd.exists(f"{rel}.head.safetensors"):
        head = rd.read_bytes(f"{rel}.head.safetensors")
        store.blobs.put_file(rd.file_path(f"{rel}.head.safetensors"), head)
    metrics = rd.read_json(f"{rel}.metrics.json") if rd.exists(f"{rel}.metrics.json") else {}
    controlled = bool(facts.get("controlled", True))
    training: Training = (
        "free" if stage == "baseline" else "masked" if controlled else "uncontrolled"
    )
    data: dict[str, Any] = {
        k: facts[k] for k in ("task", "labels", "train-size", "test-size") if k in facts
    }
    return add_branch(
        store,
        team,
        base_id,
        delta,
        training,
        method,
        head,
        ownership_id if training == "masked" else None,
        data,
        metrics,
    )


def _import_merge(
    rd: RunDir,
    store: Store,
    rel: str,
    data: bytes,
    choice: MergeChoice,
    config: RunConfig,
    base_id: str,
    hello: dict[str, Any],
    report: dict[str, Any] | None,
    branches: dict[str, str],
) -> str:
    owned = choice.method in OWNERSHIP_METHODS and config.uses_ownership
    stage = "train" if owned else "baseline"
    status = {t["name"]: t["status"] for t in (report or {}).get("teams", [])}
    teams = [
        t
        for t in _teams_with(rd, stage)
        if report is None
        or status.get(t) == "ok"
        or str(status.get(t, "")).startswith("left out: eval:")
    ]
    uncontrolled = [
        t for t in teams if stage == "train" and not bool(hello.get(t, {}).get("controlled", True))
    ]
    # canonical bytes (no file metadata): the same merge made by `medusa merge` gets the same id
    tensors, meta = tensors_from_bytes(data, rel)
    chosen = json.loads(meta.get("params", "{}"))  # the candidate EVAL kept, if a grid
    spec = asdict(choice.spec(chosen or choice.candidates()[0], config.seed))
    slug = rel.split("/")[1]
    metrics = {
        t.rsplit("/", 1)[-1][:-5]: rd.read_json(t)
        for t in rd.list(f"eval/{slug}/")
        if t.endswith(".json") and not t.endswith("/validation.json")
    }  # (eval/<method>/<team>.head.safetensors: a re-fit head)
    conflicts = (report or {}).get("conflicts", {}).get(choice.label, {})
    return add_merge(
        store,
        base_id,
        {t: branches[f"{stage}/{t}"] for t in teams},
        spec,
        tensors,
        label=choice.label,
        uncontrolled=uncontrolled,
        metrics=metrics,
        conflicts=conflicts,
    )


def _merge_choices(config: RunConfig) -> list[MergeChoice]:
    return [config.merge, *(config.compare if config.uses_ownership else ())]


def _merged_files(rd: RunDir) -> list[str]:
    """``merged/<method>/shared.safetensors`` files (the merged shared space of each method)."""
    return [
        r for r in rd.list("merged/") if r.count("/") == 2 and r.endswith("/shared.safetensors")
    ]


def _teams_with(rd: RunDir, stage: str) -> list[str]:
    out = []
    for rel in rd.list(f"{stage}/"):
        name = rel.split("/", 1)[1]
        if name.endswith(".safetensors") and not name.endswith(".head.safetensors"):
            out.append(name[: -len(".safetensors")])
    return sorted(out)


def _shapes(rd: RunDir) -> dict[str, list[int]]:
    """Shared-space shapes from the first dense tensor file the run stored (none yet: {})."""
    rels = [
        f"{stage}/{team}.safetensors"
        for stage in ("train", "baseline")
        for team in _teams_with(rd, stage)
    ] + _merged_files(rd)
    for rel in rels[:1]:
        tensors, _ = tensors_from_bytes(rd.read_bytes(rel), rel)
        return {n: list(t.shape) for n, t in tensors.items()}
    return {}


def _source(model: str) -> str:
    """A bundled name as is; a local directory as an absolute path (imports run elsewhere)."""
    from medusa_fed.training.config import ModelSpec

    if ModelSpec(source=model).is_bundled:
        return model
    path = Path(model).expanduser()
    return str(path.resolve()) if path.exists() else model


def store_path_for(setting: str) -> Path | None:
    """Where a run is imported: the run's ``store`` setting if given, else the one default every
    history command reads too (``$MEDUSA_STORE`` or ``./runs/.medusa-store``); ``off`` = none."""
    text = setting.strip()
    if text.lower() in STORE_OFF:
        return None
    return Path(text) if text else default_store_path()


def import_after_run(run_dir: RunDir, setting: str) -> ImportResult | None:
    """The coordinator's last step: import its run into the configured store.

    A failure is logged, never raised: the run directory is complete either way, and
    ``medusa import RUN_DIR`` can import it later.
    """
    target = store_path_for(setting)
    if target is None:
        return None
    try:
        return import_run(run_dir, target)
    except (MedusaError, OSError, sqlite3.Error) as exc:
        log.warning(
            "store: run %s not imported into %s (%s); import it later with "
            "`medusa import %s --store %s`",
            run_dir.path,
            target,
            exc,
            run_dir.path,
            target,
        )
        return None


__all__ = ["ImportResult", "import_after_run", "import_run", "store_path_for"]
