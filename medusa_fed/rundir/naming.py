"""Names inside a run directory: relative paths and file-name-safe team and stage names."""

from __future__ import annotations

import re
from collections.abc import Collection
from pathlib import PurePosixPath

from medusa_fed.errors import StoreError
from medusa_fed.rundir.atomic import TEMP_PREFIX

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def check_name(name: str, what: str) -> str:
    """Return ``name`` if it is file-name safe (letters, digits, ``_.-``; no leading dot)."""
    if not isinstance(name, str) or not SAFE_NAME.match(name):
        raise StoreError(
            f"expected a {what} name of letters, digits, '_', '.', '-' (not starting with "
            f"'.', '_' or '-'), found {name!r}; nothing stored"
        )
    return name


def normalize_relpath(relpath: str, reserved: Collection[str] = ()) -> str:
    """``relpath`` as a normalised ``/``-separated path inside the run directory.

    Refuses absolute paths, ``..``, backslashes, empty parts, temporary-file names and the
    directory's own index files (``reserved``), which only the store writes.
    """
    if not isinstance(relpath, str) or not relpath or "\\" in relpath:
        raise StoreError(f"expected a non-empty '/'-separated relative path, found {relpath!r}")
    path = PurePosixPath(relpath)
    parts = [p for p in path.parts if p != "."]
    if path.is_absolute() or not parts or any(p in ("..", "") for p in parts):
        raise StoreError(
            f"expected a relative path inside the run directory, found {relpath!r}; nothing done"
        )
    if any(p.startswith(TEMP_PREFIX) for p in parts):
        raise StoreError(f"{relpath!r}: names starting with {TEMP_PREFIX!r} are temporary files")
    rel = "/".join(parts)
    if rel in reserved:
        raise StoreError(f"{rel!r} is kept by the store itself; choose another path")
    return rel
