"""The Flower edge: payloads survive ArrayRecord, Flower's protobuf serde and chunked transfer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord
from flwr.common.serde import array_record_from_proto, array_record_to_proto
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents

from medusa_fed import codec
from medusa_fed.codec.layout import Payload
from medusa_fed.codec.records import arrays_from_record, record_from_arrays, record_nbytes
from medusa_fed.deltas import top_d
from medusa_fed.errors import PayloadError

SHAPES = {"encoder.layer.0.attention.self.query.weight": (300, 400), "pooler.dense.bias": (37,)}


def _wire(record: ArrayRecord) -> ArrayRecord:
    """Deflate to object contents (Arrays sliced into chunks) and inflate, as a transfer does."""
    contents = {oid: obj.deflate() for oid, obj in get_all_nested_objects(record).items()}
    inflated = inflate_object_from_contents(record.object_id, contents)
    assert isinstance(inflated, ArrayRecord)
    return inflated


def _mixed_payload() -> Payload:
    return {
        "a.b::bits": np.packbits(np.arange(21) % 3 == 0, bitorder="little"),
        "a.b::gaps": np.array([0, 3, 255], dtype=np.uint8),
        "c::idx32": np.array([1, 2**32 - 1], dtype=np.uint32),
        "c::idx64": np.array([5, 2**40], dtype=np.int64),
        "d::val": np.array([1.5, -65504.0], dtype=np.float16),
        "e::bf16": torch.randn(3, 2).to(torch.bfloat16).view(torch.int16).numpy(),
        "f::dense": np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32),
        "g::empty": np.zeros(0, dtype=np.float32),
    }


@pytest.mark.parametrize("transport", ["record", "proto", "chunked"])
def test_keys_dtypes_shapes_and_bytes_survive(
    transport: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: tiny chunks so each array is split into several
    monkeypatch.setattr("flwr.app.message.array.FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE", 64)
    payload = _mixed_payload()
    record = record_from_arrays(payload)
    assert len(record["f::dense"].slice_array()) > 1
    # Execute
    if transport == "proto":
        record = array_record_from_proto(array_record_to_proto(record))
    elif transport == "chunked":
        record = _wire(record)
    out = arrays_from_record(record)
    # Assert
    assert list(out) == list(payload)
    for key, arr in payload.items():
        assert out[key].dtype == arr.dtype and out[key].shape == arr.shape
        assert np.array_equal(out[key], arr)


def test_every_payload_kind_decodes_after_a_chunked_transfer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: 120k-element tensor, 4 KiB chunks
    monkeypatch.setattr("flwr.app.message.array.FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE", 4096)
    gen = torch.Generator().manual_seed(1)
    delta = {k: torch.randn(s, generator=gen) * 1e-5 for k, s in SHAPES.items()}
    masks = {k: torch.rand(s, generator=gen) < 0.3 for k, s in SHAPES.items()}
    owned = {k: delta[k] * masks[k] for k in SHAPES}
    sparse = {k: top_d(v, 0.05) for k, v in delta.items()}
    # Execute
    probe = codec.decode_sparse_delta(
        arrays_from_record(_wire(record_from_arrays(codec.encode_sparse_delta(sparse)))), SHAPES
    )
    mask = codec.decode_mask(
        arrays_from_record(_wire(record_from_arrays(codec.encode_mask(masks)))), SHAPES
    )
    reply = codec.decode_owned_values(
        arrays_from_record(_wire(record_from_arrays(codec.encode_owned_values(owned, masks)))),
        mask,
        team="legal",
    )
    dense = codec.decode_dense(
        arrays_from_record(_wire(record_from_arrays(codec.encode_dense(delta)))), SHAPES
    )
    # Assert
    for k in SHAPES:
        assert torch.equal(probe[k].indices, sparse[k].indices)
        assert torch.equal(mask[k], masks[k])
        assert torch.equal(reply[k], owned[k])
        assert torch.equal(dense[k], delta[k])


def test_record_nbytes_counts_npy_bytes_and_keys() -> None:
    # Prepare
    payload = codec.encode_mask({"m": torch.ones(1000, dtype=torch.bool)})
    # Execute
    record = record_from_arrays(payload)
    # Assert
    assert codec.payload_nbytes(payload) == 125
    assert record_nbytes(record) == len(record["m::mask"].data) + len("m::mask")
    assert 125 < record_nbytes(record) <= 125 + 7 + 128  # data + key + .npy header


def test_record_from_arrays_refuses_non_numeric_arrays() -> None:
    # Prepare
    payload = {"w::val": np.array(["x"], dtype=object)}
    # Execute / Assert
    with pytest.raises(PayloadError, match="w::val: expected a numeric numpy array"):
        record_from_arrays(payload)  # type: ignore[arg-type]


def test_arrays_from_record_rejects_corrupt_and_mislabelled_arrays() -> None:
    # Prepare
    good = Array(np.zeros(4, dtype=np.float32))
    corrupt = ArrayRecord({"w::dense": Array("float32", (4,), "numpy.ndarray", b"garbage")})
    mislabelled = ArrayRecord({"w::dense": Array("float16", (4,), good.stype, good.data)})
    # Execute / Assert
    with pytest.raises(PayloadError, match="w::dense: expected a .npy array"):
        arrays_from_record(corrupt)
    with pytest.raises(PayloadError, match=r"w::dense: declared float16\(4,\), found float32"):
        arrays_from_record(mislabelled)
