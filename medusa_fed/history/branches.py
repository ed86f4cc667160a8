"""The branch store: base models, team branches, ownership maps and merges, like Git objects.

A store is a directory (default ``runs/.medusa-store``, see :func:`default_store_path`)::

    store.db                 SQLite metadata (medusa_fed.history.db): objects, graph edges, blobs
    blobs/<aa>/<sha256>      content-addressed safetensors blobs (medusa_fed.history.blobs)

Objects (``kind``) and what their blobs hold; ids are the SHA-256 of each object's identifying
content, so importing the same run twice changes nothing and ids can be shortened like Git's:

- ``base``: a base model by fingerprint. Only a *reference* (source: bundled name or local HF
  directory) plus family, method and the shared-space shapes; no weights are copied. Its values
  are loaded from the source and checked against the fingerprint when needed.
- ``ownership``: an ownership map blob (uint8 owner per element), its teams and shares.
- ``branch``: one team's fine-tune: its delta blob (relative to its ``start``: the base or a
  merge), its own head blob, the method, a description of its data (task name, sizes, labels;
  never data) and its metrics. ``training`` is ``masked`` (owned elements only), ``free``
  (unmasked, for post-hoc baselines) or ``uncontrolled`` (refused masks).
- ``merge``: the merged shared values (blob), its start, its branches, method and settings,
  the teams' metrics on it and its conflict counts.
- ``run``: an imported run directory (path, config, report blob); the only mutable object
  (re-importing a run that went on updates it).

Crash safety: a blob is written atomically *before* the transaction that inserts the row that
refers to it (:meth:`Store.put` refuses a row whose blob is missing), so a crash anywhere leaves
either the old store or the new one, plus at worst an orphan blob.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medusa_fed.errors import StoreError
from medusa_fed.history.blobs import BlobStore
from medusa_fed.history.db import Database, Edge, ObjectRow
from medusa_fed.rundir.manifest import now_iso

logger = logging.getLogger(__name__)

STORE_DB = "store.db"
BLOBS_DIR = "blobs"
STORE_ENV = "MEDUSA_STORE"
DEFAULT_STORE = Path("runs/.medusa-store")
MIN_PREFIX = 4


def default_store_path() -> Path:
    """``$MEDUSA_STORE`` if set, else ``runs/.medusa-store`` (beside the default run dirs)."""
    return Path(os.environ.get(STORE_ENV) or DEFAULT_STORE)


def object_id(kind: str, content: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of ``{"kind": kind, **content}``."""
    text = json.dumps({"kind": kind, **content}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


class Store:
    """A branch store directory (see the module docstring).

    Parameters
    ----------
    path : str | os.PathLike[str]
        The store directory; a writer creates it.
    readonly : bool (default: False)
        A reader: the store must exist; never writes.
    """

    def __init__(self, path: str | os.PathLike[str], *, readonly: bool = False) -> None:
        self.root = Path(path)
        self.readonly = readonly
        if not readonly:
            self.root.mkdir(parents=True, exist_ok=True)
        self.blobs = BlobStore(self.root / BLOBS_DIR)
        self.db = Database(self.root / STORE_DB, readonly=readonly)
        if not readonly:
            self.blobs.clean_temporaries()
        self._bases: dict[tuple[str, str | None], Any] = {}

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r}, readonly={self.readonly})"

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.db.close()

    # ---- writing -------------------------------------------------------------------------

    def put(
        self,
        kind: str,
        name: str,
        content: Mapping[str, Any],
        meta: Mapping[str, Any] | None = None,
        parents: Sequence[tuple[str, str]] = (),
        blobs: Mapping[str, str] | None = None,
    ) -> tuple[str, bool]:
        """Insert an object whose ``blobs`` (role -> sha256) are already stored.

        Parameters
        ----------
        kind : str
            A :data:`medusa_fed.history.db.KINDS` entry.
        name : str
            Human label shown by ``medusa log`` (team, method, source).
        content : Mapping[str, Any]
            The identifying fields; the id is their hash (:func:`object_id`).
        meta : Mapping[str, Any] | None (default: None)
            Descriptive fields (metrics, shares); stored beside ``content``.
        parents : Sequence[tuple[str, str]] (default: ())
            ``(parent id, role)`` edges, in order (a merge's branches keep theirs).
        blobs : Mapping[str, str] | None (default: None)
            Blob ids the object refers to; each must already be in ``blobs/``.

        Returns
        -------
        tuple[str, bool]
            The id, and whether the object is new.
        """
        blobs = dict(blobs or {})
        missing = [role for role, sha in blobs.items() if not self.blobs.has(sha)]
        if missing:
            raise StoreError(
                f"{kind} {name!r}: expected its blobs {missing} stored before its row, found "
                "them missing; nothing recorded (write blobs first)"
            )
        obj_id = object_id(kind, content)
        full = {**dict(content), **dict(meta or {}), "blobs": blobs}
        edges: list[Edge] = []
        pos: dict[str, int] = {}
        for parent, role in parents:
            pos[role] = pos.get(role, -1) + 1
            edges.append(Edge(obj_id, parent, role, pos[role]))
        with self.db.transaction() as conn:
            for role, sha in blobs.items():
                Database.record_blob(conn, sha, self.blobs.path(sha).stat().st_size, role)
            new = Database.insert(conn, obj_id, kind, name, now_iso(), full, edges)
        if new:
            logger.debug("store: new %s %s (%s)", kind, obj_id[:8], name)
        return obj_id, new

    def update_meta(self, obj_id: str, changes: Mapping[str, Any]) -> None:
        """Merge ``changes`` into an object's meta (runs, and sources/metrics of others)."""
        with self.db.transaction() as conn:
            row = self.db.get(obj_id)
            if row is None:
                raise StoreError(f"expected object {obj_id[:12]} in the store, found none")
            Database.set_meta(conn, obj_id, {**row.meta, **dict(changes)})

    def link(self, child: str, parent: str, role: str) -> None:
        """Add one edge (e.g. an existing branch found again in another run)."""
        with self.db.transaction() as conn:
            Database.link(conn, [Edge(child, parent, role)])

    # ---- reading -------------------------------------------------------------------------

    def get(self, obj_id: str) -> ObjectRow:
        row = self.db.get(obj_id)
        if row is None:
            raise StoreError(f"expected object {obj_id[:12]} in {self.root}, found none")
        return row

    def resolve(self, ref: str, kind: str | Sequence[str] | None = None) -> ObjectRow:
        """The object named by a full id or a unique prefix of at least 4 hex digits.

        ``kind`` restricts the match (e.g. ``"branch"``); StoreError lists the candidates of an
        ambiguous prefix.
        """
        prefix = ref.strip().lower()
        if len(prefix) < MIN_PREFIX or any(c not in "0123456789abcdef" for c in prefix):
            raise StoreError(
                f"expected an object id or a prefix of at least {MIN_PREFIX} hex digits, found "
                f"{ref!r}; see `medusa log` for ids"
            )
        kinds = (kind,) if isinstance(kind, str) else tuple(kind or ())
        found = [r for r in self.db.find(prefix) if not kinds or r.kind in kinds]
        if not found:
            what = "/".join(kinds) or "object"
            raise StoreError(f"no {what} with id {ref!r} in {self.root}; see `medusa log`")
        if len(found) > 1:
            listed = ", ".join(f"{r.kind} {r.id[:12]} ({r.name})" for r in found[:6])
            raise StoreError(f"id prefix {ref!r} is ambiguous: {listed}; give more digits")
        return found[0]

    def parent(self, obj_id: str, role: str) -> ObjectRow | None:
        """The first ``role`` parent of ``obj_id`` (e.g. a branch's start), if any."""
        edges = self.db.parents(obj_id, role)
        return self.get(edges[0].parent) if edges else None

    def parents(self, obj_id: str, role: str) -> list[ObjectRow]:
        return [self.get(e.parent) for e in self.db.parents(obj_id, role)]

    def children(self, obj_id: str, role: str) -> list[ObjectRow]:
        rows = [self.get(e.child) for e in self.db.children(obj_id, role)]
        return sorted(rows, key=lambda r: r.seq)

    def base_of(self, row: ObjectRow) -> ObjectRow:
        """The base an object ultimately starts from (following start edges)."""
        seen = set()
        while row.kind != "base":
            if row.id in seen:
                raise StoreError(f"{row.kind} {row.short}: its start edges form a cycle")
            seen.add(row.id)
            nxt = self.parent(row.id, "start") or self.parent(row.id, "base")
            if nxt is None:
                raise StoreError(f"{row.kind} {row.short}: expected a start or base, found none")
            row = nxt
        return row

    def verify(self) -> list[str]:
        """Problems found: blobs a row refers to that are missing or altered (empty = sound)."""
        problems = []
        for sha in sorted(self.db.blob_ids()):
            try:
                self.blobs.get(sha)
            except StoreError as e:
                problems.append(str(e))
        return problems

    def orphans(self) -> list[str]:
        """Blob files no row refers to (left by a crash between a blob and its row)."""
        known = self.db.blob_ids()
        return [sha for sha in self.blobs.all() if sha not in known]


__all__ = ["DEFAULT_STORE", "STORE_ENV", "Store", "default_store_path", "object_id"]
