"""The coordinator's run directory: every stage's inputs and outputs, hashed, written atomically.

The coordinator stores what a stage received or produced *before* the next stage starts, so a
restart resumes where it stopped and nothing a team sent is lost. Layout (paths are relative,
``/``-separated; ``<team>`` and ``<stage>`` are file-name-safe names)::

    config.json                         the validated run configuration
    manifest.json                       relpath -> {sha256, bytes, written_at} of every stored file
    hello/<team>.json                   a team's HELLO reply (fingerprint, task, controlled?)
    probe/<team>.safetensors            a team's top-d probe delta
    probe/<team>.scores.safetensors     probe-scores = fisher: its entries' scores (stored first)
    ownership.safetensors               the owner id of every parameter element
    train-round<r>/<team>...            rounds > 1 or warm start: round r's reply (delta, head,
                                        metrics)
    train/<team>.safetensors            a team's fine-tuned delta (owned values, or dense; with
                                        rounds > 1 or warm start the sum of its round deltas,
                                        warm: plus its owned probe values)
    train/<team>.head.safetensors       its own classification head (never merged), if any
    train/<team>.metrics.json           its metrics fine-tuned alone
    baseline/<team>...                  the same for the unmasked fine-tune of post-hoc baselines
    merged/<method>/...                 merged weights per method (``record_file`` each file
                                        that ``save_pretrained`` writes there)
    eval/<method>/<team>.json           a team's metrics on a merged model
    eval/<method>/<team>.head.safetensors  its head re-fitted on that merge (refit-epochs > 0)
    report.json  report.md  plots/*.png the run report (``medusa_fed.report``)
    log/rejected/<team>-<stage>.json    rejected payloads: list of {team, stage, reason, at}

Guarantees
----------
- Atomic files: each file is written to a temporary file in its directory, fsynced and renamed
  over the target, so readers see the previous version or the new one, never half a file.
- Hash check: ``read_*`` verifies the SHA-256 recorded in the manifest before returning anything
  and raises :class:`StoreError` naming the file, both hashes and the remedy on mismatch.
- Crash consistency: before a file is replaced its new hash is recorded in the manifest as
  ``pending``; a reader accepts the committed or the pending hash, so a crash between the data
  rename and the manifest update leaves a readable file. A writer opening the directory promotes
  or drops such leftovers (:meth:`RunDir.recover`).
- Concurrency: one writer (the coordinator) and many readers. Manifest and stage updates take an
  advisory lock (``.lock``), so several ``RunDir`` objects on one directory do not lose updates.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import logging
import os
import struct
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load

from medusa_fed.errors import StoreError
from medusa_fed.rundir.atomic import TEMP_PREFIX
from medusa_fed.rundir.manifest import (
    LOCK,
    MANIFEST,
    Manifest,
    json_bytes,
    now_iso,
    versions,
)
from medusa_fed.rundir.naming import check_name, normalize_relpath
from medusa_fed.rundir.tensors import safetensors_bytes

logger = logging.getLogger(__name__)

REJECTED_DIR = "log/rejected"
RESERVED = frozenset({MANIFEST, LOCK})


class RunDir:
    """A run directory (see the module docstring for layout and guarantees).

    Parameters
    ----------
    path : str | os.PathLike[str]
        The directory.
    readonly : bool (default: False)
        A reader: never creates, recovers or writes anything. A writer creates the directory if
        missing and settles writes a crash interrupted (:meth:`recover`) on open.
    """

    def __init__(self, path: str | os.PathLike[str], *, readonly: bool = False) -> None:
        self.root = Path(path)
        self.readonly = readonly
        self._manifest = Manifest(self.root)
        if readonly:
            if not self.root.is_dir():
                raise StoreError(
                    f"expected a run directory at {self.root}, found none; "
                    "start a run first (a writer creates it)"
                )
            return
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(
                f"run directory {self.root}: expected a folder (new or a run's), found a file; "
                "choose another --out"
            )
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f"{TEMP_PREFIX}write-check"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise StoreError(
                f"run directory {self.root}: expected a folder this process can write, "
                f"found {exc.strerror or exc}; nothing was started"
            ) from exc
        fixed = self.recover()
        if fixed:
            logger.info("run_dir: recovered %d interrupted writes in %s", len(fixed), self.root)

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r}, readonly={self.readonly})"

    @property
    def path(self) -> Path:
        """The run directory itself (same as ``root``)."""
        return self.root

    def file_path(self, relpath: str) -> Path:
        """Absolute path of ``relpath`` (validated: relative, no ``..``, not a reserved file)."""
        return self.root / normalize_relpath(relpath, RESERVED)

    # ---- raw bytes ------------------------------------------------------------------------

    def write_bytes(self, relpath: str, data: bytes) -> str:
        """Store ``data`` at ``relpath`` atomically and record its hash; return the sha256."""
        rel = normalize_relpath(relpath, RESERVED)
        with self._lock():
            return self._manifest.put(rel, bytes(data))

    def read_bytes(self, relpath: str) -> bytes:
        """The stored bytes of ``relpath``, hash-verified; StoreError if missing or altered."""
        return self._manifest.read(normalize_relpath(relpath, RESERVED))

    def record_file(self, relpath: str) -> str:
        """Record the hash of a file another writer put at ``relpath`` (e.g. ``save_pretrained``
        output); return its sha256. That file's atomicity is its writer's concern."""
        rel = normalize_relpath(relpath, RESERVED)
        target = self.root / rel
        if not target.is_file():
            raise StoreError(f"expected a file at {target} to record, found none")
        with self._lock():
            return self._manifest.put(rel, target.read_bytes())

    # ---- typed payloads -------------------------------------------------------------------

    def write_tensors(
        self,
        relpath: str,
        tensors: Mapping[str, torch.Tensor],
        metadata: Mapping[str, str] | None = None,
    ) -> str:
        """Store ``tensors`` (and string ``metadata``) as a safetensors file; return the sha256."""
        meta = dict(metadata or {})
        bad = [k for k, v in meta.items() if not (isinstance(k, str) and isinstance(v, str))]
        if bad:
            raise StoreError(
                f"{relpath}: safetensors metadata must map str to str, found non-str at {bad}; "
                "nothing written"
            )
        try:
            data = safetensors_bytes(_standalone(tensors), meta or None)
        except (TypeError, ValueError, RuntimeError) as e:
            raise StoreError(f"{relpath}: cannot serialise tensors ({e}); nothing written") from e
        return self.write_bytes(relpath, data)

    def read_tensors(self, relpath: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """The tensors and metadata stored at ``relpath``, hash-verified."""
        data = self.read_bytes(relpath)
        try:
            (header_len,) = struct.unpack("<Q", data[:8])
            header = json.loads(data[8 : 8 + header_len])
            return st_load(data), dict(header.get("__metadata__") or {})
        except Exception as e:  # hash matched, so the writer stored something unreadable
            raise StoreError(
                f"{self.root / relpath}: not a readable safetensors file ({e}); "
                "delete it to have the stage redone"
            ) from e

    def write_json(self, relpath: str, obj: Any) -> str:
        """Store ``obj`` as strict JSON (no NaN/Inf); return the sha256."""
        return self.write_bytes(relpath, json_bytes(obj, relpath))

    def read_json(self, relpath: str) -> Any:
        """The JSON value stored at ``relpath``, hash-verified."""
        data = self.read_bytes(relpath)
        try:
            return json.loads(data)
        except ValueError as e:
            raise StoreError(
                f"{self.root / relpath}: expected JSON, found unparsable content ({e}); "
                "delete it to have the stage redone"
            ) from e

    # ---- queries --------------------------------------------------------------------------

    def exists(self, relpath: str, *, verify: bool = False) -> bool:
        """Whether ``relpath`` is stored: in the manifest and present with the recorded size
        (``verify=True``: with the recorded sha256, which reads the whole file)."""
        return self._manifest.holds(normalize_relpath(relpath, RESERVED), verify=verify)

    def list(self, prefix: str = "") -> builtins.list[str]:
        """Sorted relpaths in the manifest that start with ``prefix`` (e.g. ``"probe/"``)."""
        entries = self._manifest.load()
        return sorted(r for r, e in entries.items() if r.startswith(prefix) and versions(e))

    def remove(self, relpath: str) -> None:
        """Delete ``relpath`` and its manifest entry (to have the stage that wrote it redone)."""
        rel = normalize_relpath(relpath, RESERVED)
        with self._lock():
            entries = self._manifest.load()
            if entries.pop(rel, None) is not None:
                self._manifest.save(entries)
            with contextlib.suppress(FileNotFoundError):
                (self.root / rel).unlink()

    # ---- rejected payloads ----------------------------------------------------------------

    def record_rejection(self, team: str, stage: str, reason: str) -> None:
        """Append ``{team, stage, reason, at}`` to ``log/rejected/<team>-<stage>.json``."""
        check_name(team, "team")
        check_name(stage, "stage")
        rel = f"{REJECTED_DIR}/{team}-{stage}.json"
        with self._lock():
            records = json.loads(self._manifest.read(rel)) if self.exists(rel) else []
            records.append({"team": team, "stage": stage, "reason": reason, "at": now_iso()})
            self._manifest.put(rel, json_bytes(records, rel))
        logger.warning("run_dir: rejected %s payload of team %s: %s", stage, team, reason)

    def rejections(self) -> builtins.list[dict[str, str]]:
        """All rejection records (``team``, ``stage``, ``reason``, ``at``), oldest first."""
        records: builtins.list[dict[str, str]] = []
        for rel in self.list(REJECTED_DIR + "/"):
            records.extend(self.read_json(rel))
        return sorted(records, key=lambda r: r["at"])

    # ---- recovery -------------------------------------------------------------------------

    def recover(self) -> builtins.list[str]:
        """Settle writes a crash interrupted (see :meth:`Manifest.recover`); return the relpaths
        whose manifest entries changed."""
        if self.readonly:
            raise StoreError(f"{self!r}: expected a writer to recover, found a reader")
        return self._manifest.recover()

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        if self.readonly:
            raise StoreError(f"{self!r}: expected a writer, found a reader; nothing written")
        with self._manifest.lock():
            yield


def _standalone(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU contiguous tensors; a tensor sharing storage with an earlier one is cloned (safetensors
    refuses shared storage)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise StoreError(f"tensor '{name}': expected a torch.Tensor, found {type(t).__name__}")
        t = t.detach().cpu().contiguous()
        if t.numel() and t.untyped_storage().data_ptr() in seen:
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        out[name] = t
    return out


__all__ = ["REJECTED_DIR", "RunDir"]
