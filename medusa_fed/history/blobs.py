"""Content-addressed blobs of the branch store: ``blobs/<aa>/<sha256>``, written atomically.

A blob's name is the SHA-256 of its bytes, so a blob is immutable, stored once however many
objects share it, and checked on every read. Blobs are written *before* the database row that
refers to them (see :mod:`medusa_fed.history.branches`): a crash in between leaves an orphan blob
(harmless, reported by :meth:`BlobStore.orphans`) and never a row without its blob.

Files of a run directory are cloned copy-on-write where the filesystem supports it (no extra
disk), else copied; never hard-linked, since a run file edited in place would change the blob.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import struct
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from safetensors.torch import load as st_load

from medusa_fed.errors import StoreError
from medusa_fed.rundir.atomic import TEMP_PREFIX, atomic_write, fsync_dir, sha256_hex
from medusa_fed.rundir.tensors import safetensors_bytes

try:  # reflink (copy-on-write clone) support; Linux only
    import fcntl
except ImportError:  # pragma: no cover - not Linux
    fcntl = None  # type: ignore[assignment]

HEX = frozenset("0123456789abcdef")
FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)
STALE_TEMP_S = 3600.0  # a temporary blob file this old was left by a crash, not a live writer


def tensors_bytes(
    tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> bytes:
    """``tensors`` as safetensors bytes (contiguous CPU copies; shared storage cloned)."""
    out: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        out[name] = t.detach().cpu().contiguous().clone()
    try:
        return safetensors_bytes(out, metadata)
    except (TypeError, ValueError, RuntimeError) as e:
        raise StoreError(f"cannot serialise tensors ({e}); nothing stored") from e


def tensors_from_bytes(data: bytes, where: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and string metadata of safetensors ``data``; StoreError names ``where``."""
    try:
        (header_len,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + header_len])
        return st_load(data), dict(header.get("__metadata__") or {})
    except Exception as e:  # safetensors raises its own types
        raise StoreError(
            f"{where}: expected a safetensors blob, found unreadable bytes ({e})"
        ) from e


class BlobStore:
    """The ``blobs/`` folder of a store.

    Parameters
    ----------
    root : Path
        The folder holding the two-hex-digit fan-out directories.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, sha: str) -> Path:
        """Where blob ``sha`` lives (whether or not it exists)."""
        if len(sha) != 64 or not set(sha) <= HEX:
            raise StoreError(f"expected a 64-digit lowercase hex blob id, found {sha!r}")
        return self.root / sha[:2] / sha[2:]

    def has(self, sha: str) -> bool:
        return self.path(sha).is_file()

    def put(self, data: bytes) -> str:
        """Store ``data`` (no-op if already present); return its sha256."""
        sha = sha256_hex(data)
        if not self.has(sha):
            atomic_write(self.path(sha), data)
        return sha

    def put_file(self, source: Path, data: bytes) -> str:
        """Store the verified bytes ``data`` read from ``source``; return the sha256.

        Where the filesystem can (btrfs, XFS: ``FICLONE``) the blob is a copy-on-write clone of
        ``source`` sharing its disk blocks; elsewhere a plain copy. Never a hard link: a file
        edited in place would change the blob with it.
        """
        sha = sha256_hex(data)
        if self.has(sha):
            return sha
        target = self.path(sha)
        if not self._clone(source, target, sha):
            atomic_write(target, data)
        return sha

    def _clone(self, source: Path, target: Path, sha: str) -> bool:
        if fcntl is None:  # pragma: no cover - not Linux
            return False
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f"{TEMP_PREFIX}{target.name[:8]}.{secrets.token_hex(8)}"
        try:
            with open(source, "rb") as src, open(tmp, "wb") as dst:
                fcntl.ioctl(dst.fileno(), FICLONE, src.fileno())
                os.fsync(dst.fileno())
            if sha256_hex(tmp.read_bytes()) != sha:  # source replaced since it was read
                return False
            os.replace(tmp, target)
        except OSError:  # no reflinks on this filesystem: the caller copies
            return False
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
        fsync_dir(target.parent)
        return True

    def get(self, sha: str) -> bytes:
        """The bytes of blob ``sha``, hash-verified; StoreError if missing or altered."""
        target = self.path(sha)
        try:
            data = target.read_bytes()
        except FileNotFoundError:
            raise StoreError(
                f"blob {sha[:12]} expected at {target}, found none; the store was edited by hand "
                "or copied without blobs/. Re-import the run that produced it (medusa import)"
            ) from None
        found = sha256_hex(data)
        if found != sha:
            raise StoreError(
                f"blob {target}: expected sha256 {sha}, found {found}; the file was changed after "
                "it was stored. Delete it and re-import the run that produced it"
            )
        return data

    def put_tensors(
        self, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
    ) -> str:
        """Store ``tensors`` as a safetensors blob; return its sha256."""
        return self.put(tensors_bytes(tensors, metadata))

    def get_tensors(self, sha: str) -> dict[str, torch.Tensor]:
        """The tensors of safetensors blob ``sha`` (hash-verified)."""
        return tensors_from_bytes(self.get(sha), f"blob {sha[:12]}")[0]

    def all(self) -> Iterator[str]:
        """Every stored blob id (temporary files skipped)."""
        if not self.root.is_dir():
            return
        for sub in sorted(self.root.iterdir()):
            if sub.is_dir() and len(sub.name) == 2:
                for f in sorted(sub.iterdir()):
                    if not f.name.startswith(TEMP_PREFIX):
                        yield sub.name + f.name

    def clean_temporaries(self, older_than_s: float = STALE_TEMP_S) -> int:
        """Delete temporary files a crash left behind; return how many.

        Only files older than ``older_than_s``: a younger one may belong to another writer
        that is still writing it (readers never look at temporary files either way).
        """
        n = 0
        cutoff = time.time() - older_than_s
        for tmp in self.root.rglob(TEMP_PREFIX + "*"):
            with contextlib.suppress(OSError):
                if tmp.stat().st_mtime < cutoff:
                    tmp.unlink()
                    n += 1
        return n


__all__ = ["BlobStore", "tensors_bytes", "tensors_from_bytes"]
