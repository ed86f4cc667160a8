"""Safetensors bytes that depend only on their content.

``safetensors.torch.save`` writes the ``__metadata__`` keys in an order that changes from one
process to the next (measured: three processes, three orders), so identical results gave files
with different hashes. Every safetensors file medusa-fed writes goes through
:func:`safetensors_bytes`, which rewrites the header with its metadata keys sorted.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping

import torch
from safetensors.torch import save


def safetensors_bytes(
    tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> bytes:
    """``safetensors.torch.save`` with a canonical header: same tensors + metadata, same bytes."""
    data = save(dict(tensors), metadata=dict(metadata) if metadata else None)
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size])
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the format aligns the data start to 8 bytes
    return struct.pack("<Q", len(text)) + text + data[8 + size :]
