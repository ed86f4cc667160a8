"""An object's tensors: base values, branch deltas and heads, merged values.

- a ``base``'s values are loaded from its source (bundled name or local Hugging Face directory)
  and must still have the recorded fingerprint; ``model=`` points at a moved copy;
- a ``branch``'s values are its start's values plus its delta (fp32; equal to the tuned values
  up to one rounding of ``start + (tuned - start)``);
- a ``merge``'s values are its stored result, bit for bit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from medusa_fed.deltas import StateDict
from medusa_fed.errors import ModelError, StoreError
from medusa_fed.history.branches import Store
from medusa_fed.history.db import ObjectRow

if TYPE_CHECKING:
    from medusa_fed.training.models import BaseModel

_BASES: dict[tuple[str, str], BaseModel] = {}  # (fingerprint, source) -> loaded base


def base_model(store: Store, row: ObjectRow, model: str | None = None) -> BaseModel:
    """Load the base of ``row`` (any object) and check its fingerprint.

    Parameters
    ----------
    model : str | None (default: None)
        A bundled name or local directory to load instead of the recorded sources (the base
        moved); it must have the same fingerprint.
    """
    from medusa_fed.training.config import ModelSpec
    from medusa_fed.training.models import load_base

    base = store.base_of(row)
    fingerprint = str(base.meta["fingerprint"])
    sources = [model] if model else list(base.meta.get("sources") or [base.meta["source"]])
    tried = []
    for source in sources:
        key = (fingerprint, source)
        if key in _BASES:
            return _BASES[key]
        spec = ModelSpec(source=source, family=base.meta["family"], method=base.meta["method"])
        try:
            loaded = load_base(spec)
        except ModelError as e:
            tried.append(f"{source}: {str(e).splitlines()[0]}")
            continue
        if loaded.fingerprint() != fingerprint:
            tried.append(f"{source}: fingerprint {loaded.fingerprint()[:12]}")
            continue
        _BASES[key] = loaded
        return loaded
    raise StoreError(
        f"base {base.short}: expected a model with fingerprint {fingerprint[:12]}, found none "
        f"(tried {'; '.join(tried)}); pass --model DIR with the original base model"
    )


def delta_of(store: Store, branch: ObjectRow) -> StateDict:
    """A branch's delta relative to its start (fp32 per shared tensor)."""
    _expect(branch, "branch")
    return store.blobs.get_tensors(branch.meta["blobs"]["delta"])


def head_of(store: Store, branch: ObjectRow) -> StateDict:
    """A branch's own head (classifier) tensors; empty if the team kept it private."""
    _expect(branch, "branch")
    sha = branch.meta["blobs"].get("head")
    return store.blobs.get_tensors(sha) if sha else {}


def labels_of(branch: ObjectRow) -> tuple[str, ...] | None:
    """The class names a branch's data description recorded (None if not a classifier)."""
    labels = [str(x) for x in branch.meta.get("data", {}).get("labels") or [] if str(x) != "-"]
    return tuple(labels) or None


def values_of(store: Store, row: ObjectRow, model: str | None = None) -> StateDict:
    """The whole shared space of ``row`` (base, branch or merge), fp32."""
    if row.kind == "base":
        return base_model(store, row, model).shared_state()
    if row.kind == "merge":
        return store.blobs.get_tensors(row.meta["blobs"]["result"])
    if row.kind == "branch":
        start = store.parent(row.id, "start")
        if start is None:
            raise StoreError(f"branch {row.short}: expected a start (base or merge), found none")
        values = values_of(store, start, model)
        for name, d in delta_of(store, row).items():
            if name not in values:
                raise StoreError(
                    f"branch {row.short}: delta tensor {name!r} is not in its start's shared "
                    "space; the store is inconsistent"
                )
            values[name] = values[name] + d
        return values
    raise StoreError(
        f"{row.kind} {row.short} has no model values; expected a base, branch or merge id"
    )


def _expect(row: ObjectRow, kind: str) -> None:
    if row.kind != kind:
        raise StoreError(f"expected a {kind} id, found {row.kind} {row.short} ({row.name})")


__all__ = ["base_model", "delta_of", "head_of", "labels_of", "values_of"]
