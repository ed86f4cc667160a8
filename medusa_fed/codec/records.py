"""The Flower edge of the codec: payload dicts <-> ``flwr.app.ArrayRecord``.

Imported explicitly by strategies/ and clients/ (``medusa_fed.codec`` itself never imports Flower).
Each array travels as its ``.npy`` bytes (``np.save``, no pickle; Flower slices them in 5 MiB
chunks), keys unchanged, so dtypes (uint8 bitmaps, uint*/int64 indices, fp16, int16 bf16 bits)
and shapes survive the wire exactly.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord

from medusa_fed.codec.layout import NDArray, Payload
from medusa_fed.errors import PayloadError

WIRE_KINDS = frozenset("biuf")  # bool, signed, unsigned, float; never object/str/void


def record_from_arrays(arrays: Mapping[str, NDArray]) -> ArrayRecord:
    """Wrap a payload in an ArrayRecord, keys and insertion order kept."""
    record = ArrayRecord()
    for key, arr in arrays.items():
        if not isinstance(arr, np.ndarray) or arr.dtype.kind not in WIRE_KINDS:
            found = arr.dtype if isinstance(arr, np.ndarray) else type(arr)
            raise PayloadError(
                f"{key}: expected a numeric numpy array, found {found}; nothing was sent"
            )
        record[key] = Array(np.ascontiguousarray(arr))
    return record


def arrays_from_record(record: object) -> Payload:
    """Unwrap an ArrayRecord into a payload; a corrupt or mislabelled array raises PayloadError.

    Only checks that each array loads (no pickle) and matches its declared dtype and shape; the
    codec's decoders check the content.
    """
    if not isinstance(record, ArrayRecord):
        raise PayloadError(f"expected an ArrayRecord, found {type(record)}; payload rejected")
    out: Payload = {}
    for key, item in record.items():
        try:
            arr = item.numpy()
        except (TypeError, ValueError, EOFError, OSError) as exc:
            raise PayloadError(
                f"{key}: expected a .npy array, found bytes that do not load "
                f"({exc}); payload rejected"
            ) from exc
        if str(arr.dtype) != item.dtype or tuple(arr.shape) != tuple(item.shape):
            raise PayloadError(
                f"{key}: declared {item.dtype}{tuple(item.shape)}, found "
                f"{arr.dtype}{tuple(arr.shape)} in the data; payload rejected"
            )
        out[key] = arr
    return out


def record_nbytes(record: ArrayRecord) -> int:
    """Bytes an ArrayRecord carries: each array's .npy bytes (data + ~128-byte header) + its
    UTF-8 key. Compare with ``codec.payload_nbytes`` (data only) to see the framing cost."""
    return sum(len(item.data) + len(key.encode("utf-8")) for key, item in record.items())
