"""Dense tensors: an uncontrolled team's full delta, merged weights for EVAL, a team's own head.

- ``<t>::dense``: the tensor in its own float dtype (float16/float32/float64), its own shape:
  ``itemsize * n`` bytes (4n for fp32).
- ``<t>::bf16``: a bfloat16 tensor's bits viewed as int16 (numpy has no bfloat16 and Flower
  refuses it): ``2n`` bytes, decoded bit-exactly.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from medusa_fed.codec.layout import (
    NDArray,
    Payload,
    Shapes,
    part_key,
    rejection,
    split_payload,
)
from medusa_fed.errors import PayloadError

DENSE_DTYPES = (torch.float16, torch.float32, torch.float64)
WIRE_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


def encode_dense(state: Mapping[str, torch.Tensor]) -> Payload:
    """Float tensors as they are (bf16 as int16 bits); ``itemsize * numel`` bytes each."""
    out: Payload = {}
    for name, t in state.items():
        t = t.detach().cpu().contiguous()
        if t.dtype == torch.bfloat16:
            out[part_key(name, "bf16")] = t.view(torch.int16).numpy()
        elif t.dtype in DENSE_DTYPES:
            out[part_key(name, "dense")] = t.numpy()
        else:
            raise PayloadError(
                f"{name}: expected a float16/bfloat16/float32/float64 tensor, found {t.dtype}; "
                f"nothing encoded"
            )
    return out


def decode_dense(
    arrays: Mapping[str, NDArray],
    shapes: Shapes | None,
    team: str | None = None,
    dtype: torch.dtype | None = torch.float32,
    max_bytes: int | None = None,
) -> dict[str, torch.Tensor]:
    """Decode dense tensors, checking names, shapes, dtypes and finiteness.

    Parameters
    ----------
    arrays : Mapping[str, np.ndarray]
        The payload (``encode_dense``'s layout).
    shapes : Mapping[str, tuple[int, ...]] | None
        Every tensor expected, exactly. None accepts the names and shapes as sent (for a team's
        own head, which the receiver cannot know); bound the size with ``max_bytes`` then.
    team : str | None (default: None)
        Sender, named in error messages.
    dtype : torch.dtype | None (default: torch.float32)
        Output dtype; None keeps the sent one (bfloat16 for ``::bf16``).
    max_bytes : int | None (default: None)
        Reject payloads whose data exceeds this many bytes.
    """
    names = list(shapes) if shapes is not None else None
    grouped = split_payload(arrays, names, ("dense", "bf16"), team, max_bytes)
    out: dict[str, torch.Tensor] = {}
    for name, parts in grouped.items():
        if len(parts) != 1:
            raise rejection(name, f"expected one of dense|bf16, found {sorted(parts)}", team)
        ((part, arr),) = parts.items()
        where = part_key(name, part)
        expected = (np.dtype(np.int16),) if part == "bf16" else WIRE_DTYPES
        if arr.dtype not in expected:
            wanted = "/".join(str(d) for d in expected)
            raise rejection(where, f"expected dtype {wanted}, found {arr.dtype}", team)
        if shapes is not None and tuple(arr.shape) != tuple(shapes[name]):
            numel = int(np.prod(shapes[name]))
            kind = "truncated" if arr.size < numel else "oversized"
            kind = "reshaped" if arr.size == numel else kind
            raise rejection(
                where, f"expected shape {tuple(shapes[name])}, found {arr.shape} ({kind})", team
            )
        t = torch.from_numpy(np.ascontiguousarray(arr).copy())
        if part == "bf16":
            t = t.view(torch.bfloat16)
        if not bool(torch.isfinite(t).all()):
            bad = t.numel() - int(torch.isfinite(t).sum())
            raise rejection(where, f"expected finite values, found {bad:,} NaN/Inf", team)
        out[name] = t if dtype is None else t.to(dtype)
    return out
