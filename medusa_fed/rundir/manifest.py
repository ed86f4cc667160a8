"""The run directory's manifest: the sha256 and size of every stored file, and how writes commit.

``manifest.json`` maps a relpath to ``{"sha256", "bytes", "written_at"}``. A write first records
the new version under ``"pending"`` in that entry, then atomically replaces the file, then makes
the pending version the committed one. A reader accepts either version, so a crash at any point
leaves the old or the new file readable; :meth:`Manifest.recover` settles the leftovers.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from medusa_fed.errors import StoreError
from medusa_fed.rundir.atomic import TEMP_PREFIX, atomic_write, exclusive_lock, sha256_hex

MANIFEST = "manifest.json"
LOCK = ".lock"

Entry = dict[str, Any]


def now_iso() -> str:
    """The current UTC time, ISO 8601 with milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def json_bytes(obj: Any, where: str) -> bytes:
    """``obj`` as strict, indented UTF-8 JSON; StoreError on NaN/Inf or non-JSON values."""
    try:
        text = json.dumps(obj, indent=2, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as e:
        raise StoreError(
            f"{where}: expected a strict-JSON value (finite numbers, str keys), found {e}; "
            "nothing written"
        ) from e
    return text.encode("utf-8") + b"\n"


def load_index(path: Path) -> dict[str, Any]:
    """A JSON-object index file (manifest, stages); ``{}`` if absent."""
    try:
        value = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except ValueError as e:
        raise StoreError(
            f"{path}: expected a JSON object, found unparsable content ({e}); restore it or "
            "start a new run directory"
        ) from e
    if not isinstance(value, dict):
        raise StoreError(f"{path}: expected a JSON object, found {type(value).__name__}")
    return value


def versions(entry: Entry | None) -> list[Entry]:
    """The acceptable versions of a manifest entry: committed first, then pending."""
    if entry is None:
        return []
    out = [entry] if "sha256" in entry else []
    if "pending" in entry:
        out.append(entry["pending"])
    return out


def _committed(entry: Entry | None) -> Entry:
    return {k: v for k, v in (entry or {}).items() if k != "pending"}


class Manifest:
    """Hash bookkeeping of the files under ``root`` (relpaths already validated by the caller)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / MANIFEST

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive writer lock around a read-modify-write of the manifest."""
        with exclusive_lock(self.root / LOCK):
            yield

    def load(self) -> dict[str, Entry]:
        return load_index(self.path)

    def save(self, entries: Mapping[str, Entry]) -> None:
        atomic_write(self.path, json_bytes(dict(sorted(entries.items())), MANIFEST))

    def put(self, rel: str, data: bytes) -> str:
        """Write ``data`` to ``rel`` (pending, replace, commit); return the sha256. Needs lock."""
        entry = {"sha256": sha256_hex(data), "bytes": len(data), "written_at": now_iso()}
        entries = self.load()
        committed = _committed(entries.get(rel))
        entries[rel] = {**committed, "pending": entry}
        self.save(entries)
        try:
            atomic_write(self.root / rel, data)
        except BaseException:
            if committed:  # roll back: the old version stays the only valid one
                entries[rel] = committed
            else:
                del entries[rel]
            with contextlib.suppress(Exception):
                self.save(entries)
            raise
        entries[rel] = entry
        self.save(entries)
        return str(entry["sha256"])

    def read(self, rel: str) -> bytes:
        """The bytes of ``rel`` if they match a recorded version; StoreError otherwise."""
        target = self.root / rel
        entry: Entry | None = None
        found = ""
        for _ in range(2):  # a second look covers a write landing between our two reads
            entry = self.load().get(rel)
            if entry is None or not target.is_file():
                continue
            data = target.read_bytes()
            found = sha256_hex(data)
            if any(v["sha256"] == found for v in versions(entry)):
                return data
        if entry is None or not target.is_file():
            raise StoreError(self._missing_message(rel, entry, target.is_file()))
        expected = " or ".join(v["sha256"] for v in versions(entry)) or "(none recorded)"
        raise StoreError(
            f"{target}: expected sha256 {expected} (from {MANIFEST}), found {found}; the file was "
            "changed or corrupted after it was stored. Delete it to have the stage redone."
        )

    def holds(self, rel: str, *, verify: bool = False) -> bool:
        """Whether ``rel`` is recorded and present with a recorded size (or hash, ``verify``)."""
        entry = self.load().get(rel)
        target = self.root / rel
        if entry is None or not target.is_file():
            return False
        if verify:
            found = sha256_hex(target.read_bytes())
            return any(v["sha256"] == found for v in versions(entry))
        size = target.stat().st_size
        return any(v["bytes"] == size for v in versions(entry))

    def recover(self) -> list[str]:
        """Settle interrupted writes; return the relpaths whose entries changed.

        A pending version whose file matches it is committed; one whose file still matches the
        committed hash is dropped; a never-committed entry without a file is removed. Stray
        temporary files are deleted. Anything else is left for :meth:`read` to report.
        """
        changed: list[str] = []
        with self.lock():
            for tmp in self.root.rglob(TEMP_PREFIX + "*"):
                with contextlib.suppress(OSError):
                    tmp.unlink()
            entries = self.load()
            for rel, entry in list(entries.items()):
                if "pending" not in entry:
                    continue
                target = self.root / rel
                found = sha256_hex(target.read_bytes()) if target.is_file() else None
                if found == entry["pending"]["sha256"]:
                    entries[rel] = entry["pending"]
                elif _committed(entry):
                    entries[rel] = _committed(entry)
                elif found is None:
                    del entries[rel]
                else:
                    continue
                changed.append(rel)
            if changed:
                self.save(entries)
        return changed

    def _missing_message(self, rel: str, entry: Entry | None, present: bool) -> str:
        target = self.root / rel
        if entry is None and not present:
            return (
                f"{target}: expected a stored file, found none (not written yet); "
                "the stage that writes it must run first"
            )
        if entry is None:
            return (
                f"{target}: present but not in {MANIFEST} (written outside the store or "
                "interrupted); delete it to have the stage redone"
            )
        expected = " or ".join(v["sha256"] for v in versions(entry))
        return (
            f"{target}: listed in {MANIFEST} with sha256 {expected}, but the file is missing; "
            "run the stage that writes it again"
        )
