"""PROBE reply (and optional uncontrolled TRAIN reply): a top-d SparseDelta per tensor.

Per tensor of ``n`` elements with ``k`` kept entries, the payload holds

- the positions, in whichever of two forms is smaller (gaps on a tie):
  ``<t>::gaps`` delta-encoded flat indices (first = the index itself, then the difference to the
  previous one, always >= 1) in the narrowest of uint8/uint16/uint32/uint64 that holds the largest
  gap: ``w * k`` bytes, w in {1, 2, 4, 8};
  or ``<t>::bits`` a presence bitmap, uint8, little bit order: ``ceil(n / 8)`` bytes;
- ``<t>::val`` the values as float16, scaled by a power of two: ``2 * k`` bytes;
- ``<t>::exp`` that power, int16, one entry: 2 bytes. value = float32(val) * 2**exp.

The scale is chosen so the largest magnitude lands in [2**14, 2**15): fp16 can never overflow
(its max is 65504), whatever the delta's magnitude, and small deltas (a short probe at a low
learning rate moves weights by ~1e-5, where plain fp16 is subnormal) keep 11 significant bits.
Entries below 2**-29 of the tensor's largest magnitude lose precision and may decode as 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch

from medusa_fed.codec.layout import (
    NDArray,
    Payload,
    Shapes,
    check_finite,
    check_vector,
    pack_bits,
    part_key,
    rejection,
    split_payload,
    unpack_bits,
)
from medusa_fed.deltas import SparseDelta

GAP_DTYPES = (np.uint8, np.uint16, np.uint32, np.uint64)
SPARSE_PARTS = ("gaps", "bits", "val", "exp")


def encode_sparse_delta(deltas: Mapping[str, SparseDelta]) -> Payload:
    """Encode top-d deltas; each tensor costs ``2k + 2 + min(w * k, ceil(n / 8))`` bytes.

    Raises PayloadError for an inconsistent SparseDelta (see ``SparseDelta.validate``).
    """
    out: Payload = {}
    for name, sd in deltas.items():
        sd.validate(name)
        idx = sd.indices.detach().cpu().numpy()
        n, k = sd.numel, idx.shape[0]
        gaps = np.diff(idx, prepend=np.int64(0))  # gaps[0] = idx[0]
        peak_gap = int(gaps.max()) if k else 0
        gap_dtype = next(d for d in GAP_DTYPES if peak_gap <= np.iinfo(d).max)
        if np.dtype(gap_dtype).itemsize * k <= (n + 7) // 8:
            out[part_key(name, "gaps")] = gaps.astype(gap_dtype)
        else:
            flags = np.zeros(n, dtype=np.bool_)
            flags[idx] = True
            out[part_key(name, "bits")] = pack_bits(flags)
        values, exp = to_scaled_fp16(sd.values.detach().cpu().to(torch.float32).numpy())
        out[part_key(name, "val")] = values
        out[part_key(name, "exp")] = np.array([exp], dtype=np.int16)
    return out


def decode_sparse_delta(
    arrays: Mapping[str, NDArray],
    shapes: Shapes,
    team: str | None = None,
    max_bytes: int | None = None,
) -> dict[str, SparseDelta]:
    """Decode and validate a sparse payload against the expected ``shapes``.

    Parameters
    ----------
    arrays : Mapping[str, np.ndarray]
        The payload (``encode_sparse_delta``'s layout).
    shapes : Mapping[str, tuple[int, ...]]
        Every tensor expected, exactly; unknown or missing names are rejected.
    team : str | None (default: None)
        Sender, named in error messages.
    max_bytes : int | None (default: None)
        Reject payloads whose data exceeds this many bytes.

    Returns
    -------
    dict[str, SparseDelta]
        int64 strictly increasing indices, finite float32 values.
    """
    grouped = split_payload(arrays, list(shapes), SPARSE_PARTS, team, max_bytes)
    out: dict[str, SparseDelta] = {}
    for name, shape in shapes.items():
        parts = grouped[name]
        found = sorted(parts)
        if found not in (["exp", "gaps", "val"], ["bits", "exp", "val"]):
            raise rejection(name, f"expected parts gaps|bits + val + exp, found {found}", team)
        n = math.prod(shape)
        if "bits" in parts:
            flags = unpack_bits(parts["bits"], n, part_key(name, "bits"), team)
            idx = np.flatnonzero(flags)
        else:
            idx = _indices_from_gaps(parts["gaps"], n, part_key(name, "gaps"), team)
        val = parts["val"]
        where = part_key(name, "val") + " (one per index)"
        check_vector(val, where, [np.float16], idx.shape[0], team)
        check_finite(val, part_key(name, "val"), team)
        check_vector(parts["exp"], part_key(name, "exp"), [np.int16], 1, team)
        with np.errstate(over="ignore"):  # overflow to inf is caught just below
            values = np.ldexp(val.astype(np.float32), int(parts["exp"][0]))
        check_finite(values, part_key(name, "val") + " (after scaling)", team)
        indices = torch.from_numpy(idx.astype(np.int64, copy=False))
        out[name] = SparseDelta(tuple(shape), indices, torch.from_numpy(values))
    return out


def to_scaled_fp16(values: NDArray) -> tuple[NDArray, int]:
    """float32 values -> (float16 values / 2**exp, exp), largest magnitude in [2**14, 2**15)."""
    peak = float(np.max(np.abs(values))) if values.size else 0.0
    if peak == 0.0:
        return values.astype(np.float16), 0
    exp = math.frexp(peak)[1] - 15  # peak < 2**(exp + 15)
    return np.ldexp(values, -exp).astype(np.float16), exp


def _indices_from_gaps(gaps: NDArray, numel: int, where: str, team: str | None) -> NDArray:
    """Gaps -> int64 flat indices; checks count, strict increase and range."""
    check_vector(gaps, where, GAP_DTYPES, None, team)
    k = gaps.shape[0]
    if k > numel:
        raise rejection(where, f"expected at most {numel:,} indices, found {k:,} (oversized)", team)
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    if (repeats := np.flatnonzero(gaps[1:] == 0)).size:
        found = f"a repeat at entry {repeats[0] + 1}"
        raise rejection(where, f"expected strictly increasing indices, found {found}", team)
    # The float sum bounds the exact one, so the int64 cumsum below cannot overflow.
    if float(np.sum(gaps, dtype=np.float64)) > 2.0 * numel:
        raise rejection(where, f"expected indices in [0, {numel:,}), found larger ones", team)
    idx = np.cumsum(gaps, dtype=np.int64)
    if idx[-1] >= numel:
        raise rejection(where, f"expected indices in [0, {numel:,}), found {int(idx[-1]):,}", team)
    return idx
