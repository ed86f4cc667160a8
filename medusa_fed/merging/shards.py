"""Safetensors files read one tensor at a time and written one tensor at a time (HF shards).

A streamed merge must not hold a whole model. ``safe_open`` maps the file, and every page it
touches stays in the process's resident set until the file is closed (measured: reading a 400 MB
file tensor by tensor left 461 MB of ``RssFile``), so :class:`SafetensorsFile` parses the header
itself and reads each tensor with positioned reads into a fresh buffer: resident memory is the
tensors the caller still holds, nothing more.

:class:`ShardWriter` knows every tensor's shape and dtype before the first is written, so it
writes each shard's header first and then each tensor's bytes at its offset as soon as the tensor
is done (any order). Shards follow Hugging Face's layout: one ``model.safetensors``, or
``model-00001-of-0000N.safetensors`` files plus ``model.safetensors.index.json``
(``{"metadata": {"total_size": bytes}, "weight_map": {tensor: file}}``). Files are written under
temporary names and renamed into place only when every tensor arrived, so a failed merge leaves
no partial model behind.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import struct
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType

import torch

from medusa_fed.errors import MergeError
from medusa_fed.rundir.atomic import TEMP_PREFIX, atomic_write, fsync_dir

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
CODES: dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}
INDEX = "model.safetensors.index.json"
MAX_SHARD_BYTES = 5 * 2**30  # Hugging Face's default shard size (5 GB)

Layout = dict[str, tuple[tuple[int, ...], torch.dtype]]


def _bytes_of(t: torch.Tensor) -> memoryview:
    """The raw bytes of ``t`` (contiguous, on CPU), without a copy when it already is."""
    flat = t.detach().cpu().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())  # type: ignore[arg-type]


class SafetensorsFile(Mapping[str, torch.Tensor]):
    """The tensors of one safetensors file, each read from disk on access (never mapped)."""

    returns_new_tensors = True  # every access reads a new tensor the caller owns

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                if n > size - 8:
                    raise ValueError(f"header of {n:,} bytes in a {size:,}-byte file")
                header = json.loads(f.read(n))
        except (OSError, ValueError, struct.error) as exc:
            raise MergeError(
                f"{self.path}: expected a safetensors file, found one that cannot be read "
                f"({exc}); nothing merged"
            ) from None
        self.metadata: dict[str, str] = dict(header.pop("__metadata__", None) or {})
        data_start, data_size = 8 + n, size - 8 - n
        self._entries: dict[str, tuple[torch.dtype, tuple[int, ...], int]] = {}
        for name, entry in header.items():
            dtype = DTYPES.get(str(entry.get("dtype")))
            shape = tuple(int(x) for x in entry.get("shape", ()))
            start, end = (int(x) for x in entry.get("data_offsets", (0, -1)))
            if dtype is None or end - start != math.prod(shape) * dtype.itemsize or end > data_size:
                raise MergeError(
                    f"{self.path}: tensor {name!r}: expected a dtype among {sorted(DTYPES)} "
                    f"and offsets inside the data matching its shape, found {entry}; nothing "
                    "merged"
                )
            self._entries[name] = (dtype, shape, data_start + start)

    def layout(self) -> Layout:
        """``name -> (shape, dtype)`` of every tensor, without reading any data."""
        return {n: (shape, dtype) for n, (dtype, shape, _) in self._entries.items()}

    def __getitem__(self, name: str) -> torch.Tensor:
        dtype, shape, offset = self._entries[name]
        out = torch.empty(shape, dtype=dtype)
        view, done = _bytes_of(out), 0
        with open(self.path, "rb", buffering=0) as f:
            while done < len(view):  # one read returns at most ~2 GiB on Linux
                got = os.preadv(f.fileno(), [view[done:]], offset + done)
                if got <= 0:
                    raise MergeError(
                        f"{self.path}: tensor {name!r} ends after {done:,} of {len(view):,} "
                        "bytes: the file is truncated; nothing merged"
                    )
                done += got
        return out

    def __contains__(self, name: object) -> bool:
        # Mapping's default would read the tensor (it calls __getitem__); the header answers
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


class ShardedTensors(Mapping[str, torch.Tensor]):
    """Tensors of a safetensors file or a model folder (its index json, else every shard)."""

    returns_new_tensors = True  # every access reads a new tensor the caller owns

    def __init__(self, path: Path) -> None:
        path = Path(path)
        if path.is_file():
            files = [path]
        elif (path / INDEX).is_file():
            try:
                weight_map = json.loads((path / INDEX).read_text())["weight_map"]
            except (OSError, ValueError, KeyError) as exc:
                raise MergeError(f"{path / INDEX}: expected a weight_map, found {exc!r}") from None
            files = [path / f for f in sorted(set(weight_map.values()))]
        else:
            files = sorted(path.glob("*.safetensors"))
        if not files:
            raise MergeError(f"{path}: expected safetensors weights, found none")
        self._where: dict[str, SafetensorsFile] = {}
        for file in files:
            opened = SafetensorsFile(file)
            for name in opened:
                self._where[name] = opened

    def layout(self) -> Layout:
        """``name -> (shape, dtype)`` of every tensor, without reading any data."""
        return {n: f.layout()[n] for n, f in self._where.items()}

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._where[name][name]

    def __contains__(self, name: object) -> bool:
        return name in self._where

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)


def layout_of(tensors: Mapping[str, torch.Tensor]) -> Layout:
    """Shapes and dtypes of a mapping: read from the header where it is lazy, else from tensors."""
    layout = getattr(tensors, "layout", None)
    if callable(layout):
        return dict(layout())
    return {n: (tuple(t.shape), t.dtype) for n, t in tensors.items()}


class ShardWriter:
    """Write planned tensors into safetensors shards as each one is done (see module docstring).

    out : Path
        The folder that receives the shards (created; existing shard names are replaced).
    layout : Mapping[str, tuple[tuple[int, ...], torch.dtype]]
        Every tensor that will be written, with its shape and dtype.
    max_shard_bytes : int (default: 5 GiB)
        A shard closes before a tensor that would take it past this size.
    metadata : Mapping[str, str] | None (default: None)
        ``__metadata__`` of every shard (``{"format": "pt"}`` is what ``from_pretrained`` wants).
    """

    def __init__(
        self,
        out: Path,
        layout: Mapping[str, tuple[tuple[int, ...], torch.dtype]],
        max_shard_bytes: int = MAX_SHARD_BYTES,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self._layout = {n: (tuple(s), d) for n, (s, d) in layout.items()}
        # widest dtype first, then name: every tensor starts aligned to its element size
        order = sorted(self._layout, key=lambda n: (-self._layout[n][1].itemsize, n))
        groups: list[list[str]] = [[]]
        size = 0
        for name in order:
            nbytes = self._nbytes(name)
            if groups[-1] and size + nbytes > max_shard_bytes:
                groups.append([])
                size = 0
            groups[-1].append(name)
            size += nbytes
        names = (
            ["model.safetensors"]
            if len(groups) == 1
            else [f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors" for i in range(len(groups))]
        )
        self.files = names
        self.total_size = sum(self._nbytes(n) for n in self._layout)
        self._where: dict[str, tuple[int, int]] = {}  # name -> (shard, absolute offset)
        self._fds: list[int] = []
        self._tmp: list[Path] = []
        self._left = set(self._layout)
        try:
            for i, group in enumerate(groups):
                header, offset = self._header(group, metadata)
                tmp = self.out / f"{TEMP_PREFIX}{names[i]}"
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                self._fds.append(fd)
                self._tmp.append(tmp)
                os.pwrite(fd, header, 0)
                os.ftruncate(fd, offset)
                at = len(header)
                for name in group:
                    self._where[name] = (i, at)
                    at += self._nbytes(name)
        except OSError:
            self.abort()
            raise

    def _nbytes(self, name: str) -> int:
        shape, dtype = self._layout[name]
        return math.prod(shape) * dtype.itemsize

    def _header(self, group: list[str], metadata: Mapping[str, str] | None) -> tuple[bytes, int]:
        """The shard's header bytes (8-byte length + JSON padded to 8) and its file size."""
        entries: dict[str, object] = {}
        if metadata:
            entries["__metadata__"] = dict(sorted(metadata.items()))
        at = 0
        for name in group:
            shape, dtype = self._layout[name]
            entries[name] = {
                "dtype": CODES[dtype],
                "shape": list(shape),
                "data_offsets": [at, at + self._nbytes(name)],
            }
            at += self._nbytes(name)
        text = json.dumps(entries, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)
        header = struct.pack("<Q", len(text)) + text
        return header, len(header) + at

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Write one planned tensor at its place (shape and dtype as planned, once)."""
        if name not in self._layout:
            raise MergeError(f"{name}: expected one of the planned tensors, found an unplanned one")
        if name not in self._left:
            raise MergeError(f"{name}: written twice; expected each planned tensor once")
        shape, dtype = self._layout[name]
        if tuple(tensor.shape) != shape or tensor.dtype != dtype:
            raise MergeError(
                f"{name}: expected shape {shape} and dtype {dtype}, found "
                f"{tuple(tensor.shape)} {tensor.dtype}; nothing written"
            )
        shard, offset = self._where[name]
        view, done = _bytes_of(tensor), 0
        while done < len(view):  # one write moves at most ~2 GiB on Linux
            done += os.pwrite(self._fds[shard], view[done:], offset + done)
        self._left.discard(name)

    def finish(self) -> list[Path]:
        """Check every tensor arrived, sync and rename the shards, write the index (if sharded)."""
        if self._left:
            missing = sorted(self._left)
            self.abort()
            raise MergeError(
                f"{len(missing)} planned tensor(s) were never written (e.g. {missing[:3]}); "
                "nothing kept"
            )
        paths = []
        for fd, tmp, name in zip(self._fds, self._tmp, self.files, strict=True):
            os.fsync(fd)
            os.close(fd)
            os.replace(tmp, self.out / name)
            paths.append(self.out / name)
        self._fds, self._tmp = [], []
        if len(paths) > 1:
            index = {
                "metadata": {"total_size": self.total_size},
                "weight_map": {n: self.files[self._where[n][0]] for n in sorted(self._layout)},
            }
            atomic_write(self.out / INDEX, (json.dumps(index, indent=2) + "\n").encode())
            paths.append(self.out / INDEX)
        fsync_dir(self.out)
        return paths

    def abort(self) -> None:
        """Close and delete every temporary shard (nothing is renamed into place)."""
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        for tmp in self._tmp:
            with contextlib.suppress(OSError):
                tmp.unlink()
        self._fds, self._tmp = [], []

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self.abort()
