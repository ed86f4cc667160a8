"""Payload layout: how tensors map to flat array keys, and the checks every decoder shares.

A payload is a ``dict[str, np.ndarray]``. Each array's key is ``"<tensor>::<part>"``: the tensor's
name (dots allowed, ``"::"`` forbidden) and what the array holds (``gaps``, ``bits``, ``val``,
``exp``, ``mask``, ``owned``, ``dense``, ``bf16``). Since a tensor name never contains ``"::"``,
splitting a key at its only ``"::"`` is unambiguous.

The payload carries no shapes: the receiver knows them (the base model is shared) and checks every
array against them, so a sender cannot choose what is allocated on the other side.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from medusa_fed.errors import PayloadError

NDArray = npt.NDArray[Any]
Payload = dict[str, NDArray]
Shapes = Mapping[str, tuple[int, ...]]

SEP = "::"


def part_key(name: str, part: str) -> str:
    """``"<name>::<part>"``; a tensor name containing ``"::"`` is refused."""
    if SEP in name:
        raise PayloadError(
            f"tensor name {name!r} contains the reserved separator '{SEP}'; expected names "
            f"without it; nothing was encoded"
        )
    return f"{name}{SEP}{part}"


def payload_nbytes(arrays: Mapping[str, NDArray]) -> int:
    """Bytes of the arrays' data (no keys, no headers): the cost figure for reports."""
    return sum(int(a.nbytes) for a in arrays.values())


def dense_fp32_nbytes(shapes: Shapes) -> int:
    """Bytes the same tensors would cost as dense float32: ``4 * sum(numel)``."""
    return 4 * sum(math.prod(s) for s in shapes.values())


def tensor_shapes(state: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """``{name: shape}`` of a state dict (tensors or arrays), for the decoders' ``shapes``."""
    return {name: tuple(int(d) for d in t.shape) for name, t in state.items()}


def rejection(where: str, what: str, team: str | None) -> PayloadError:
    """A PayloadError naming the team (when known) and the tensor or key at fault."""
    if team is None:
        return PayloadError(f"{where}: {what}; payload rejected")
    return PayloadError(f"team '{team}', {where}: {what}; payload rejected, other teams unaffected")


def split_payload(
    arrays: Mapping[str, NDArray],
    names: Collection[str] | None,
    parts: Collection[str],
    team: str | None,
    max_bytes: int | None,
) -> dict[str, dict[str, NDArray]]:
    """Group a payload's arrays by tensor: ``{tensor: {part: array}}``.

    Checks that the payload is a mapping of str to ndarray, is at most ``max_bytes`` (data bytes),
    uses only known ``parts``, and names exactly the tensors in ``names`` (any names when None).
    """
    if not isinstance(arrays, Mapping):
        raise rejection("payload", f"expected a mapping of arrays, found {type(arrays)}", team)
    for key, arr in arrays.items():
        if not isinstance(arr, np.ndarray):
            raise rejection(repr(key), f"expected a numpy array, found {type(arr)}", team)
    if max_bytes is not None and (n := payload_nbytes(arrays)) > max_bytes:
        raise rejection("payload", f"expected at most {max_bytes:,} bytes, found {n:,}", team)
    grouped: dict[str, dict[str, NDArray]] = {}
    for key, arr in arrays.items():
        pieces = key.split(SEP) if isinstance(key, str) else []
        if len(pieces) != 2 or pieces[1] not in parts:
            expected = f"a key '<tensor>{SEP}<part>' with part in {sorted(parts)}"
            raise rejection(repr(key), f"expected {expected}", team)
        name, part = pieces
        if names is not None and name not in names:
            raise rejection(name, "unknown tensor name (not in the expected shapes)", team)
        grouped.setdefault(name, {})[part] = arr
    if names is not None and (missing := [n for n in names if n not in grouped]):
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise rejection(", ".join(missing[:3]) + more, "missing from the payload", team)
    return grouped


def check_vector(
    arr: NDArray,
    where: str,
    dtypes: Collection[np.dtype[Any] | type],
    length: int | None,
    team: str | None,
) -> None:
    """Raise unless ``arr`` is 1-D, of one of ``dtypes`` (native byte order), of ``length``."""
    allowed = [np.dtype(d) for d in dtypes]
    if arr.dtype not in allowed:
        names = "/".join(str(d) for d in allowed)
        raise rejection(where, f"expected dtype {names}, found {arr.dtype}", team)
    if arr.ndim != 1:
        raise rejection(where, f"expected a 1-D array, found shape {arr.shape}", team)
    if length is not None and arr.shape[0] != length:
        kind = "truncated" if arr.shape[0] < length else "oversized"
        found = f"{arr.shape[0]:,} ({kind})"
        raise rejection(where, f"expected {length:,} entries, found {found}", team)


def check_finite(arr: NDArray, where: str, team: str | None) -> None:
    """Raise if ``arr`` holds NaN or Inf (counted)."""
    bad = arr.size - int(np.count_nonzero(np.isfinite(arr)))
    if bad:
        raise rejection(where, f"expected finite values, found {bad:,} NaN/Inf", team)


def pack_bits(flags: NDArray) -> NDArray:
    """Bool vector -> uint8, ``ceil(n / 8)`` bytes; little bit order (element 8i+j is bit j of
    byte i); pad bits are zero."""
    return np.packbits(flags.astype(np.bool_, copy=False), bitorder="little")


def unpack_bits(bits: NDArray, numel: int, where: str, team: str | None) -> NDArray:
    """uint8 bitmap -> bool vector of ``numel``; checks length and that pad bits are zero."""
    check_vector(bits, where, [np.uint8], (numel + 7) // 8, team)
    if numel % 8 and bits.shape[0] and int(bits[-1]) >> (numel % 8):
        raise rejection(where, f"expected zero pad bits after bit {numel:,}, found set ones", team)
    return np.unpackbits(bits, count=numel, bitorder="little").view(np.bool_)
