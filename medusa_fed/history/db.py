"""The branch store's metadata database: SQLite (standard library), WAL journal, one writer.

Tables::

    objects(seq, id, kind, name, created_at, meta)   one row per object; meta is JSON
    edges(child, parent, role, pos)                  the history graph (see ROLES)
    blobs(sha256, bytes, kind)                       every blob an object refers to
    settings(key, value)                             schema version

Writers take ``BEGIN IMMEDIATE`` (one writer at a time, others wait up to ``busy_timeout``);
readers never block and see the last committed transaction (WAL). ``synchronous=FULL`` makes a
commit durable; a crash before ``COMMIT`` rolls the whole transaction back on the next open.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medusa_fed.errors import StoreError

SCHEMA_VERSION = 1
KINDS = ("base", "run", "ownership", "branch", "merge")
# child -> parent roles: start (values a delta is relative to), branch (merge input, ordered),
# ownership (map a branch trained under), run (imported from), base (ownership/run -> base),
# previous (ownership map a joining team's map extends)
ROLES = ("start", "branch", "ownership", "run", "base", "previous")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS objects (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    created_at TEXT NOT NULL,
    meta TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS edges (
    child TEXT NOT NULL REFERENCES objects(id),
    parent TEXT NOT NULL REFERENCES objects(id),
    role TEXT NOT NULL,
    pos INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (child, parent, role)
);
CREATE INDEX IF NOT EXISTS edges_parent ON edges(parent, role);
CREATE TABLE IF NOT EXISTS blobs (sha256 TEXT PRIMARY KEY, bytes INTEGER NOT NULL, kind TEXT);
"""


@dataclass(frozen=True)
class ObjectRow:
    """One stored object: ``id`` (64 hex digits), ``kind`` (a :data:`KINDS` entry), a human
    ``name``, when it was first stored, and its JSON ``meta``."""

    seq: int
    id: str
    kind: str
    name: str
    created_at: str
    meta: dict[str, Any]

    @property
    def short(self) -> str:
        return self.id[:8]


@dataclass(frozen=True)
class Edge:
    """``child`` depends on ``parent`` in ``role`` (``pos`` orders a merge's branches)."""

    child: str
    parent: str
    role: str
    pos: int = 0


def _row(r: sqlite3.Row) -> ObjectRow:
    meta = json.loads(r["meta"])
    return ObjectRow(r["seq"], r["id"], r["kind"], r["name"], r["created_at"], meta)


class Database:
    """A connection to ``store.db``.

    Parameters
    ----------
    path : Path
        The database file.
    readonly : bool (default: False)
        A reader: the file must exist; queries only (``PRAGMA query_only``).
    """

    def __init__(self, path: Path, readonly: bool = False) -> None:
        self.path = path
        self.readonly = readonly
        if readonly and not path.is_file():
            raise StoreError(
                f"expected a store database at {path}, found none; import a run first "
                "(medusa import RUN_DIR) or pass --store"
            )
        try:
            self.conn = sqlite3.connect(str(path), timeout=30.0, isolation_level=None)
            self.conn.row_factory = sqlite3.Row
            self.conn.execute("PRAGMA busy_timeout = 30000")
            if readonly:
                self.conn.execute("PRAGMA query_only = ON")
            else:
                self.conn.execute("PRAGMA journal_mode = WAL")
                self.conn.execute("PRAGMA synchronous = FULL")
                self.conn.executescript(_SCHEMA)
                self.conn.execute(
                    "INSERT OR IGNORE INTO settings VALUES ('schema', ?)", (str(SCHEMA_VERSION),)
                )
            self.conn.execute("PRAGMA foreign_keys = ON")
            self._check_schema()
        except sqlite3.DatabaseError as e:
            raise StoreError(
                f"{path}: expected a medusa store database, found an unreadable file ({e}); "
                "point --store at another directory or restore it"
            ) from e

    def _check_schema(self) -> None:
        row = self.conn.execute("SELECT value FROM settings WHERE key = 'schema'").fetchone()
        if row is None or int(row[0]) != SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: expected store schema {SCHEMA_VERSION}, found "
                f"{None if row is None else row[0]}; use the medusa-fed version that wrote it"
            )

    def close(self) -> None:
        self.conn.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``; any exception rolls everything back."""
        if self.readonly:
            raise StoreError(f"{self.path}: expected a writer, found a read-only store")
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    # ---- writes (inside transaction()) ---------------------------------------------------

    @staticmethod
    def insert(
        conn: sqlite3.Connection,
        obj_id: str,
        kind: str,
        name: str,
        created_at: str,
        meta: dict[str, Any],
        edges: Sequence[Edge] = (),
    ) -> bool:
        """Insert an object and its parent edges; False (nothing changed) if it exists."""
        cur = conn.execute(
            "INSERT OR IGNORE INTO objects (id, kind, name, created_at, meta) VALUES (?,?,?,?,?)",
            (obj_id, kind, name, created_at, json.dumps(meta, sort_keys=True)),
        )
        Database.link(conn, edges)
        return cur.rowcount == 1

    @staticmethod
    def link(conn: sqlite3.Connection, edges: Sequence[Edge]) -> None:
        for e in edges:
            if e.role not in ROLES:
                raise StoreError(f"edge role must be one of {ROLES}, found {e.role!r}")
            conn.execute(
                "INSERT OR IGNORE INTO edges (child, parent, role, pos) VALUES (?,?,?,?)",
                (e.child, e.parent, e.role, e.pos),
            )

    @staticmethod
    def set_meta(conn: sqlite3.Connection, obj_id: str, meta: dict[str, Any]) -> None:
        conn.execute(
            "UPDATE objects SET meta = ? WHERE id = ?", (json.dumps(meta, sort_keys=True), obj_id)
        )

    @staticmethod
    def record_blob(conn: sqlite3.Connection, sha: str, nbytes: int, kind: str) -> None:
        conn.execute("INSERT OR IGNORE INTO blobs VALUES (?,?,?)", (sha, nbytes, kind))

    # ---- reads ---------------------------------------------------------------------------

    def get(self, obj_id: str) -> ObjectRow | None:
        r = self.conn.execute("SELECT * FROM objects WHERE id = ?", (obj_id,)).fetchone()
        return None if r is None else _row(r)

    def find(self, prefix: str) -> list[ObjectRow]:
        """Objects whose id starts with ``prefix`` (lowercase hex)."""
        rows = self.conn.execute(
            "SELECT * FROM objects WHERE id >= ? AND id < ? ORDER BY seq",
            (prefix, prefix + "g"),  # 'g' sorts after every hex digit
        ).fetchall()
        return [_row(r) for r in rows]

    def objects(self, kind: str | None = None) -> list[ObjectRow]:
        """Every object (of ``kind``), oldest first."""
        if kind is None:
            rows = self.conn.execute("SELECT * FROM objects ORDER BY seq").fetchall()
        else:
            rows = self.conn.execute(
                "SELECT * FROM objects WHERE kind = ? ORDER BY seq", (kind,)
            ).fetchall()
        return [_row(r) for r in rows]

    def parents(self, child: str, role: str | None = None) -> list[Edge]:
        sql, args = "SELECT * FROM edges WHERE child = ?", [child]
        if role is not None:
            sql, args = sql + " AND role = ?", [*args, role]
        rows = self.conn.execute(sql + " ORDER BY role, pos", args).fetchall()
        return [Edge(r["child"], r["parent"], r["role"], r["pos"]) for r in rows]

    def children(self, parent: str, role: str | None = None) -> list[Edge]:
        sql, args = "SELECT * FROM edges WHERE parent = ?", [parent]
        if role is not None:
            sql, args = sql + " AND role = ?", [*args, role]
        rows = self.conn.execute(sql + " ORDER BY role, pos", args).fetchall()
        return [Edge(r["child"], r["parent"], r["role"], r["pos"]) for r in rows]

    def blob_ids(self) -> dict[str, int]:
        """Recorded blob id -> size in bytes."""
        return {r[0]: r[1] for r in self.conn.execute("SELECT sha256, bytes FROM blobs")}


__all__ = ["KINDS", "ROLES", "SCHEMA_VERSION", "Database", "Edge", "ObjectRow"]
