"""Atomic file replacement: a reader sees the old file or the new one, never half of either.

The recipe (POSIX): write the bytes to a temporary file in the *same* directory, ``fsync`` it,
``os.replace`` it over the target (an atomic rename on one filesystem), then ``fsync`` the directory
so the rename itself survives a power cut. If anything fails before the rename, the temporary file
is removed and the previous version of the target is untouched.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

try:  # POSIX advisory locks; absent on Windows, where the store runs without them
    import fcntl
except ImportError:  # pragma: no cover - not exercised on Linux
    fcntl = None  # type: ignore[assignment]

TEMP_PREFIX = ".tmp-"


def sha256_hex(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def fsync_dir(directory: Path) -> None:
    """Flush a directory entry (a rename or a new file) to disk; a no-op where unsupported."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int | None = None) -> None:
    """Replace ``path`` with ``data`` atomically (temp file, fsync, ``os.replace``, fsync dir).

    Parameters
    ----------
    path : Path
        The target; its parent directory is created if missing.
    data : bytes
        The complete new content.
    mode : int | None (default: None)
        File permissions, set before any byte is written (0o600 for private keys); None keeps
        the temporary file's default (0o600 from ``mkstemp``).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=TEMP_PREFIX + path.name + ".", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


@contextlib.contextmanager
def exclusive_lock(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``lock_path`` (blocking) for the ``with`` body.

    Serialises read-modify-write cycles of small index files (the manifest) between writers,
    including several ``RunDir`` objects in one process.
    """
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+b") as f:
        if fcntl is not None:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
