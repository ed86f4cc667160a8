"""The down-link that sends a controlled team only what it lacks (TRAIN starts, Medusa's EVAL).

A team already holds the base and its own total (the owned values it uploaded, summed over the
rounds). Of weights ``w`` it lacks only the positions it does not own, so the coordinator sends:

- ``<t>::lack``: ``w`` at the False positions of the team's mask, row-major (the other teams'
  owned values, in ownership-map order). ``fp32``: float32 values as they are (bit-exact),
  ``(1 - own share) x 4n`` bytes; ``fp16`` / ``bf16``: their difference from the base, as
  float16 (bfloat16 as int16 bits), half those bytes (lossy: see ``downlink-dtype``).
- ``<t>::fix-at`` (int64 flat positions, ascending, owned) and ``<t>::fix`` (float32): the owned
  positions where ``w`` is not ``base + own`` (an uncontrolled team's sign election, a merge
  scale); usually none.

The team fills its owned positions with ``base + own``, applies the fixes, and hashes the result
(:func:`fingerprint`); the coordinator sends the hash of what the team must rebuild, so a site
that kept other values, or none, is detected and sent the dense weights instead.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import torch

from medusa_fed.codec.layout import (
    NDArray,
    Payload,
    check_finite,
    check_vector,
    part_key,
    rejection,
    split_payload,
)
from medusa_fed.errors import PayloadError

DownlinkDtype = Literal["fp32", "fp16", "bf16"]
_WIRE: dict[str, np.dtype[Any]] = {
    "fp32": np.dtype(np.float32),
    "fp16": np.dtype(np.float16),
    "bf16": np.dtype(np.int16),
}

Vectors = Mapping[str, torch.Tensor]  # tensor name -> 1-D float32 values in mask order


def fingerprint(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 of the tensors' names, dtypes, shapes and bytes, in the mapping's order."""
    h = hashlib.sha256()
    for name, t in state.items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def owned_vectors(delta: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> Vectors:
    """A dense delta's values at each mask's True positions, row-major (what the team holds)."""
    return {n: delta[n].reshape(-1)[m.reshape(-1)].to(torch.float32) for n, m in masks.items()}


def encode_lacking(
    weights: Mapping[str, torch.Tensor],
    base: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor],
    own_total: Mapping[str, torch.Tensor],
    dtype: DownlinkDtype = "fp32",
) -> Payload:
    """What a team lacks of float32 ``weights``: the unowned values and the owned fixes.

    Parameters
    ----------
    weights, base : Mapping[str, Tensor]
        The shared weights to send and the base, float32, the same names and shapes.
    masks : Mapping[str, Tensor]
        The team's bool masks (what it owns).
    own_total : Mapping[str, Tensor]
        The team's own total, dense (its summed uploads; zero where it owns nothing): the team
        fills its owned elements with ``base + own_total``.
    dtype : "fp32" | "fp16" | "bf16" (default: "fp32")
        fp32 sends the unowned values bit-exactly; fp16 / bf16 their difference from the base.
    """
    out: Payload = {}
    for name, w in weights.items():
        if w.dtype != torch.float32 or base[name].dtype != torch.float32:
            raise PayloadError(
                f"{name}: expected float32 weights and base, found {w.dtype} and "
                f"{base[name].dtype}; send the dense weights instead"
            )
        flat, b, m = w.reshape(-1), base[name].reshape(-1), masks[name].reshape(-1)
        unowned = ~m.numpy()  # numpy's compress measured 4x faster than torch's bool indexing
        if dtype == "fp32":
            out[part_key(name, "lack")] = np.compress(unowned, flat.numpy())
        else:
            diff = torch.from_numpy(np.compress(unowned, (flat - b).numpy()))
            half = diff.to(torch.float16 if dtype == "fp16" else torch.bfloat16)
            wire = half if dtype == "fp16" else half.view(torch.int16)
            out[part_key(name, "lack")] = wire.numpy()
        # what the team will compute on its elements, elementwise as it does: base + own total
        guess = b + own_total[name].reshape(-1).to(torch.float32)
        differ = (flat.view(torch.int32) != guess.view(torch.int32)) & m  # bitwise: -0.0 too
        if bool(differ.any()):
            at = torch.nonzero(differ).reshape(-1)
            out[part_key(name, "fix-at")] = at.to(torch.int64).numpy()
            out[part_key(name, "fix")] = flat[at].numpy()
    return out


def decode_lacking(
    arrays: Mapping[str, NDArray],
    base: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor],
    own: Vectors,
    dtype: DownlinkDtype = "fp32",
    max_bytes: int | None = None,
) -> dict[str, torch.Tensor]:
    """Rebuild the weights from what the team lacks (``arrays``) and what it holds (the base, its
    masks and its own total in mask order); PayloadError names the first bad array."""
    grouped = split_payload(arrays, list(base), ("lack", "fix-at", "fix"), None, max_bytes)
    out: dict[str, torch.Tensor] = {}
    for name, b in base.items():
        parts, m = grouped[name], masks[name].reshape(-1)
        b = b.reshape(-1).to(torch.float32)
        owned = int(torch.count_nonzero(m))
        if "lack" not in parts:
            raise rejection(part_key(name, "lack"), "missing from the payload", None)
        where = part_key(name, "lack")
        check_vector(parts["lack"], where, [_WIRE[dtype]], b.numel() - owned, None)
        lack = torch.from_numpy(parts["lack"].copy())
        if dtype == "bf16":
            lack = lack.view(torch.bfloat16).to(torch.float32)
        check_finite(lack.numpy(), where, None)
        if own[name].shape != (owned,):
            raise PayloadError(
                f"{name}: the team holds {own[name].numel():,} own values for {owned:,} owned "
                "elements; expected one per owned element"
            )
        # one dense add, elementwise as the coordinator checked it: base + own total on the
        # team's elements; base + the sent difference (fp16 / bf16) or the sent values (fp32)
        # elsewhere
        unowned = ~m
        delta = torch.zeros_like(b)
        delta.masked_scatter_(m, own[name].to(torch.float32))
        if dtype != "fp32":
            delta.masked_scatter_(unowned, lack.to(torch.float32))
        flat = b + delta
        if dtype == "fp32":
            flat.masked_scatter_(unowned, lack)
        if "fix-at" in parts or "fix" in parts:
            at, values = _fixes(name, parts, m)
            flat[at] = values
        out[name] = flat.view(base[name].shape)
    return out


def _fixes(name: str, parts: Mapping[str, NDArray], m: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The owned positions to overwrite and their float32 values, checked."""
    if "fix-at" not in parts or "fix" not in parts:
        raise rejection(name, "expected both fix-at and fix arrays, found one", None)
    at_arr, values = parts["fix-at"], parts["fix"]
    check_vector(at_arr, part_key(name, "fix-at"), [np.int64], None, None)
    check_vector(values, part_key(name, "fix"), [np.float32], at_arr.shape[0], None)
    check_finite(values, part_key(name, "fix"), None)
    at = torch.from_numpy(at_arr.copy())
    if at.numel():
        ascending = bool((at[1:] > at[:-1]).all())
        if not (ascending and int(at[0]) >= 0 and int(at[-1]) < m.numel()):
            raise rejection(
                part_key(name, "fix-at"),
                f"expected ascending positions in [0, {m.numel():,}), found others",
                None,
            )
        if not bool(m[at].all()):
            raise rejection(part_key(name, "fix-at"), "expected owned positions only", None)
    return at, torch.from_numpy(values.copy())


__all__ = [
    "DownlinkDtype",
    "decode_lacking",
    "encode_lacking",
    "fingerprint",
    "owned_vectors",
]
