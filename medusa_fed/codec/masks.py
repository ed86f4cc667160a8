"""TRAIN request (a team's mask) and the controlled team's TRAIN reply (owned values only).

- Mask: ``<t>::mask``, uint8, the bool mask flattened row-major and bit-packed in little bit order
  (element 8i+j is bit j of byte i), pad bits zero: ``ceil(n / 8)`` bytes per tensor.
- Owned values: ``<t>::owned``, float32, the delta at the mask's True positions in row-major order,
  no indices: ``4 * owned`` bytes per tensor (an all-False mask sends an empty array). The receiver
  scatters them back with the same mask, so a value can only land on an element the team owns.
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
    split_payload,
    unpack_bits,
)
from medusa_fed.errors import PayloadError


def encode_mask(masks: Mapping[str, torch.Tensor]) -> Payload:
    """Bit-pack bool masks; ``ceil(n / 8)`` bytes per tensor."""
    out: Payload = {}
    for name, mask in masks.items():
        if mask.dtype != torch.bool:
            raise PayloadError(f"{name}: expected a bool mask, found {mask.dtype}; nothing encoded")
        out[part_key(name, "mask")] = pack_bits(mask.detach().cpu().reshape(-1).numpy())
    return out


def decode_mask(
    arrays: Mapping[str, NDArray],
    shapes: Shapes,
    team: str | None = None,
    max_bytes: int | None = None,
) -> dict[str, torch.Tensor]:
    """Unpack masks to bool tensors of ``shapes`` (every name exactly; pad bits must be zero).

    ``team`` is named in error messages; ``max_bytes`` (default: None) caps the payload's data.
    """
    grouped = split_payload(arrays, list(shapes), ("mask",), team, max_bytes)
    out: dict[str, torch.Tensor] = {}
    for name, shape in shapes.items():
        flags = unpack_bits(grouped[name]["mask"], math.prod(shape), part_key(name, "mask"), team)
        out[name] = torch.from_numpy(flags.copy()).view(shape)
    return out


def encode_owned_values(
    delta: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor],
    check_outside: bool = True,
) -> Payload:
    """The delta's values at each mask's True positions, float32, row-major; ``4 * owned`` bytes.

    Parameters
    ----------
    delta : Mapping[str, Tensor]
        The team's dense delta (tuned - base), same names and shapes as ``masks``.
    masks : Mapping[str, Tensor]
        The team's bool masks (what it owns).
    check_outside : bool (default: True)
        Raise PayloadError if the delta moved an element it does not own (masked training leaked)
        instead of silently dropping that change.
    """
    if set(delta) != set(masks):
        missing, extra = sorted(set(masks) - set(delta))[:3], sorted(set(delta) - set(masks))[:3]
        raise PayloadError(
            f"delta and mask tensors differ: missing {missing}, extra {extra}; nothing encoded"
        )
    out: Payload = {}
    for name, mask in masks.items():
        d = delta[name].detach().cpu()
        if tuple(d.shape) != tuple(mask.shape) or mask.dtype != torch.bool:
            raise PayloadError(
                f"{name}: expected a delta of the mask's shape {tuple(mask.shape)} and a bool "
                f"mask, found {tuple(d.shape)} and {mask.dtype}; nothing encoded"
            )
        mask = mask.detach().cpu()
        # dense passes only: bool indexing of a large tensor measured ~5x slower on one thread
        if check_outside and (leaked := int(torch.count_nonzero((d != 0) & ~mask))):
            raise PayloadError(
                f"{name}: expected zero delta outside the team's mask, found {leaked:,} moved "
                f"elements it does not own; masked training leaked, nothing encoded"
            )
        flat = d.to(torch.float32).reshape(-1).numpy()
        out[part_key(name, "owned")] = np.compress(mask.reshape(-1).numpy(), flat)
    return out


def decode_owned_values(
    arrays: Mapping[str, NDArray],
    masks: Mapping[str, torch.Tensor],
    team: str | None = None,
    max_bytes: int | None = None,
) -> dict[str, torch.Tensor]:
    """Scatter owned values back into dense float32 deltas (zeros outside each mask).

    Every tensor of ``masks`` must be present with exactly ``mask.sum()`` finite float32 values.
    ``team`` is named in error messages; ``max_bytes`` (default: None) caps the payload's data.
    """
    grouped = split_payload(arrays, list(masks), ("owned",), team, max_bytes)
    out: dict[str, torch.Tensor] = {}
    for name, mask in masks.items():
        values = grouped[name]["owned"]
        where = part_key(name, "owned")
        check_vector(values, where, [np.float32], None, team)
        owned = int(torch.count_nonzero(mask))
        if values.shape[0] != owned:
            sender = f"team '{team}'" if team is not None else "sender"
            tail = ", other teams unaffected" if team is not None else ""
            raise PayloadError(
                f"{sender} sent {values.shape[0]:,} values for {owned:,} owned elements of "
                f"{name}; payload rejected{tail}"
            )
        check_finite(values, where, team)
        dense = torch.zeros(tuple(mask.shape), dtype=torch.float32)
        dense.masked_scatter_(mask.to(torch.bool), torch.from_numpy(values.copy()))
        out[name] = dense
    return out
