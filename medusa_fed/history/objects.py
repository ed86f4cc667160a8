"""Typed constructors of store objects: what each kind records and how its id is made.

Every function writes the object's blobs first, then the row (:meth:`Store.put`), and returns the
object id. The *content* passed to :func:`medusa_fed.history.branches.object_id` is what identifies
an object (same content, same id); the rest is description and may be refreshed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from safetensors.torch import save as safetensors_save

from medusa_fed.errors import StoreError
from medusa_fed.history.branches import Store
from medusa_fed.ownership import OwnershipMap
from medusa_fed.ownership.ownership_map import FORMAT_VERSION, METADATA_KEY

Training = Literal["masked", "free", "uncontrolled"]


def add_base(
    store: Store,
    fingerprint: str,
    source: str,
    family: str,
    method: str,
    shapes: Mapping[str, Sequence[int]] | None = None,
) -> str:
    """Record a base model by fingerprint (a reference to ``source``, no weights copied).

    A later call with another ``source`` or newly known ``shapes`` adds them to the record.
    """
    content = {"fingerprint": fingerprint}
    shape_map = {n: list(s) for n, s in sorted((shapes or {}).items())}
    meta = {
        "source": source,
        "sources": [source],
        "family": family,
        "method": method,
        "shapes": shape_map,
        "numel": _numel(shape_map),
    }
    obj_id, new = store.put("base", _short_source(source), content, meta)
    if not new:
        row = store.get(obj_id)
        changes: dict[str, Any] = {}
        if source not in row.meta.get("sources", []):
            changes["sources"] = [*row.meta.get("sources", []), source]
        if shape_map and not row.meta.get("shapes"):
            changes.update(shapes=shape_map, numel=_numel(shape_map))
        if changes:
            store.update_meta(obj_id, changes)
    return obj_id


def add_ownership(
    store: Store,
    base_id: str,
    ownership: OwnershipMap,
    data: bytes | None = None,
    settings: Mapping[str, Any] | None = None,
    previous: str | None = None,
) -> str:
    """Record an ownership map (``data``: its safetensors bytes, if already serialised).

    ``settings`` describes how it was made (assignment policy, unselected rule);
    ``previous`` is the map it extends (a team that joined after a merge).
    """
    if data is None:
        meta_json = {
            "format": FORMAT_VERSION,
            "teams": list(ownership.teams),
            "uncontrolled": list(ownership.uncontrolled),
        }
        data = safetensors_save(
            {n: o.contiguous() for n, o in ownership.owners.items()},
            metadata={METADATA_KEY: json.dumps(meta_json)},
        )
    sha = store.blobs.put(data)
    summary = ownership.summary()
    meta = {
        "teams": list(ownership.teams),
        "uncontrolled": list(ownership.uncontrolled),
        "share": summary["share"],
        "unowned": summary["unowned"],
        "numel": summary["numel"],
        "settings": dict(settings or {}),
    }
    parents = [(base_id, "base")] + ([(previous, "previous")] if previous else [])
    name = "+".join(ownership.teams)
    obj_id, _ = store.put(
        "ownership", name, {"base": base_id, "map": sha}, meta, parents, {"map": sha}
    )
    return obj_id


def add_branch(
    store: Store,
    team: str,
    start_id: str,
    delta: Mapping[str, torch.Tensor] | bytes,
    training: Training,
    method: str,
    head: Mapping[str, torch.Tensor] | bytes | None = None,
    ownership_id: str | None = None,
    data: Mapping[str, Any] | None = None,
    metrics: Mapping[str, float] | None = None,
) -> str:
    """Record one team's branch: its delta relative to ``start_id`` (base or merge) and head.

    Parameters
    ----------
    delta, head : Mapping[str, Tensor] | bytes
        Tensors, or safetensors bytes already read (and hash-checked) from a run directory.
    training : "masked" | "free" | "uncontrolled"
        Under an ownership mask, unmasked for post-hoc baselines, or a team refusing masks.
    data : Mapping[str, Any] | None (default: None)
        What the data *is* (task name, labels, sizes); never the data itself.
    """
    if training not in ("masked", "free", "uncontrolled"):
        raise StoreError(
            f"branch training must be masked, free or uncontrolled, found {training!r}"
        )
    delta_sha = _put(store, delta)
    head_sha = _put(store, head) if head else None
    content = {
        "team": team,
        "start": start_id,
        "delta": delta_sha,
        "head": head_sha,
        "training": training,
        "ownership": ownership_id,
    }
    meta = {
        "method": method,
        "data": dict(data or {}),
        "metrics": {k: float(v) for k, v in (metrics or {}).items()},
    }
    parents = [(start_id, "start")] + ([(ownership_id, "ownership")] if ownership_id else [])
    blobs = {"delta": delta_sha} | ({"head": head_sha} if head_sha else {})
    obj_id, _ = store.put("branch", team, content, meta, parents, blobs)
    return obj_id


def add_merge(
    store: Store,
    start_id: str,
    inputs: Mapping[str, str],
    spec: Mapping[str, Any],
    result: Mapping[str, torch.Tensor] | bytes,
    label: str | None = None,
    uncontrolled: Sequence[str] = (),
    metrics: Mapping[str, Mapping[str, float]] | None = None,
    conflicts: Mapping[str, Any] | None = None,
) -> str:
    """Record a merge: ``inputs`` (key used in the merge, e.g. the team -> branch id) merged
    onto ``start_id`` with ``spec`` (MergeSpec fields); ``result`` the merged shared values."""
    if not inputs:
        raise StoreError("a merge needs at least one branch, found none; nothing recorded")
    result_sha = _put(store, result)
    method = str(spec["method"])
    content = {
        "start": start_id,
        "inputs": dict(sorted(inputs.items())),
        "spec": dict(spec),
        "uncontrolled": sorted(uncontrolled),
        "result": result_sha,
    }
    meta = {
        "label": label or method,
        "metrics": {t: dict(m) for t, m in (metrics or {}).items()},
        "conflicts": dict(conflicts or {}),
    }
    parents = [(start_id, "start")] + [(inputs[k], "branch") for k in sorted(inputs)]
    obj_id, _ = store.put("merge", label or method, content, meta, parents, {"result": result_sha})
    return obj_id


def add_run(
    store: Store, path: str, fingerprint: str, base_id: str, meta: Mapping[str, Any]
) -> str:
    """Record (or refresh) an imported run directory; its meta is replaced by ``meta``."""
    blobs = {"report": meta["report"]} if meta.get("report") else {}
    obj_id, new = store.put(
        "run",
        path.rstrip("/").rsplit("/", 1)[-1] or path,
        {"path": path, "fingerprint": fingerprint},
        meta,
        [(base_id, "base")],
        blobs,
    )
    if not new:
        store.update_meta(obj_id, {**meta, "blobs": blobs})
    return obj_id


def _put(store: Store, value: Mapping[str, torch.Tensor] | bytes) -> str:
    if isinstance(value, bytes | bytearray):
        return store.blobs.put(bytes(value))
    return store.blobs.put_tensors(value)


def _numel(shapes: Mapping[str, Sequence[int]]) -> int:
    total = 0
    for shape in shapes.values():
        n = 1
        for d in shape:
            n *= int(d)
        total += n
    return total


def _short_source(source: str) -> str:
    parts = [p for p in source.replace("\\", "/").split("/") if p]
    return "/".join(parts[-2:]) if parts else source


__all__ = ["Training", "add_base", "add_branch", "add_merge", "add_ownership", "add_run"]
