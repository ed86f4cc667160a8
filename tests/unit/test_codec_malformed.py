"""Every malformed payload raises PayloadError naming the tensor (and the team, when given)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from medusa_fed import codec
from medusa_fed.codec.layout import Payload
from medusa_fed.deltas import SparseDelta
from medusa_fed.errors import PayloadError

NAME = "encoder.layer.3.attention.self.query.weight"
OTHER = "pooler.dense.bias"
SHAPES = {NAME: (6, 20), OTHER: (20,)}


def _sparse_payload(bitmap: bool) -> Payload:
    n = 120
    count = 100 if bitmap else 5
    idx = torch.linspace(0, n - 1, count).round().long().unique()
    deltas = {
        NAME: SparseDelta((6, 20), idx, torch.randn(idx.numel())),
        OTHER: SparseDelta((20,), torch.tensor([3, 7]), torch.tensor([0.5, -2.0])),
    }
    return codec.encode_sparse_delta(deltas)


def _set(key: str, value: np.ndarray) -> Callable[[Payload], None]:
    def mutate(p: Payload) -> None:
        p[key] = value

    return mutate


def _edit(key: str, pos: int, value: float) -> Callable[[Payload], None]:
    def mutate(p: Payload) -> None:
        p[key] = p[key].copy()
        p[key][pos] = value

    return mutate


def _drop(*keys: str) -> Callable[[Payload], None]:
    def mutate(p: Payload) -> None:
        for k in keys:
            del p[k]

    return mutate


V, G, E = f"{NAME}::val", f"{NAME}::gaps", f"{NAME}::exp"
GAP_CASES = {
    "truncated values": (lambda p: _set(V, p[V][:-1])(p), "truncated"),
    "oversized values": (lambda p: _set(V, np.append(p[V], np.float16(1)))(p), "oversized"),
    "NaN value": (_edit(V, 0, np.nan), "NaN"),
    "Inf value": (_edit(V, 1, np.inf), "NaN/Inf"),
    "fp32 values": (lambda p: _set(V, p[V].astype(np.float32))(p), "expected dtype float16"),
    "2-D values": (lambda p: _set(V, p[V].reshape(1, -1))(p), "1-D"),
    "index out of range": (_edit(G, -1, 200), "expected indices in"),
    "repeated index": (_edit(G, 2, 0), "strictly increasing"),
    "int64 gaps": (lambda p: _set(G, p[G].astype(np.int64))(p), "expected dtype"),
    "too many gaps": (lambda p: _set(G, np.ones(121, dtype=np.uint8))(p), "at most 120"),
    "exponent overflow": (_set(E, np.array([200], dtype=np.int16)), "after scaling"),
    "missing exponent": (_drop(E), "expected parts"),
    "both formats": (_set(f"{NAME}::bits", np.zeros(15, dtype=np.uint8)), "expected parts"),
    "missing tensor": (_drop(V, G, E), "missing"),
    "unknown part": (_set(f"{NAME}::idx", np.zeros(1, dtype=np.int64)), "part in"),
}
B = f"{NAME}::bits"
BIT_CASES = {
    "truncated bitmap": (lambda p: _set(B, p[B][:-1])(p), "truncated"),
    "oversized bitmap": (lambda p: _set(B, np.append(p[B], np.uint8(0)))(p), "oversized"),
    "bitmap of wrong dtype": (lambda p: _set(B, p[B].astype(np.int8))(p), "expected dtype uint8"),
    "more bits than values": (
        _edit(B, 14, 0xFF),
        r"::val \(one per index\): expected 101 entries, found 100 \(truncated\)",
    ),
}


@pytest.mark.parametrize("case", sorted(GAP_CASES))
def test_malformed_sparse_gaps_payload_is_rejected_naming_team_and_tensor(case: str) -> None:
    # Prepare
    payload = _sparse_payload(bitmap=False)
    assert G in payload
    mutate, expected = GAP_CASES[case]
    mutate(payload)
    # Execute / Assert
    with pytest.raises(PayloadError, match=expected) as err:
        codec.decode_sparse_delta(payload, SHAPES, team="legal")
    assert NAME in str(err.value) and "team 'legal'" in str(err.value)


@pytest.mark.parametrize("case", sorted(BIT_CASES))
def test_malformed_sparse_bitmap_payload_is_rejected_naming_the_tensor(case: str) -> None:
    # Prepare
    payload = _sparse_payload(bitmap=True)
    assert B in payload
    mutate, expected = BIT_CASES[case]
    mutate(payload)
    # Execute / Assert
    with pytest.raises(PayloadError, match=expected) as err:
        codec.decode_sparse_delta(payload, SHAPES)
    assert NAME in str(err.value)


def test_bitmap_pad_bits_must_be_zero() -> None:
    # Prepare: 20 elements -> 3 bytes, the last 4 bits of byte 2 are padding
    payload = codec.encode_sparse_delta(
        {OTHER: SparseDelta((20,), torch.arange(20), torch.ones(20))}
    )
    payload[f"{OTHER}::bits"] = payload[f"{OTHER}::bits"].copy()
    payload[f"{OTHER}::bits"][2] |= 0x80
    # Execute / Assert
    with pytest.raises(PayloadError, match=f"{OTHER}::bits.*pad bits"):
        codec.decode_sparse_delta(payload, {OTHER: (20,)})


def test_unknown_tensor_name_and_oversized_payload_are_rejected() -> None:
    # Prepare
    payload = _sparse_payload(bitmap=False)
    extra = dict(payload, **{"decoder.secret::val": np.zeros(1, dtype=np.float16)})
    # Execute / Assert
    with pytest.raises(PayloadError, match="decoder.secret: unknown tensor name"):
        codec.decode_sparse_delta(extra, SHAPES)
    with pytest.raises(PayloadError, match="expected at most 10 bytes"):
        codec.decode_sparse_delta(payload, SHAPES, max_bytes=10)
    with pytest.raises(PayloadError, match="expected a numpy array"):
        codec.decode_sparse_delta(dict(payload, **{V: [1.0, 2.0]}), SHAPES)  # type: ignore[dict-item]


def test_owned_values_count_mismatch_message_names_team_counts_and_tensor() -> None:
    # Prepare
    mask = torch.zeros(1198 + 6, dtype=torch.bool)
    mask[:1198] = True
    payload = {f"{NAME}::owned": np.zeros(1204, dtype=np.float32)}
    # Execute / Assert
    with pytest.raises(PayloadError) as err:
        codec.decode_owned_values(payload, {NAME: mask}, team="legal")
    assert str(err.value) == (
        f"team 'legal' sent 1,204 values for 1,198 owned elements of {NAME}; "
        "payload rejected, other teams unaffected"
    )


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (np.array([1.0, np.nan], dtype=np.float32), "NaN"),
        (np.array([1.0, -np.inf], dtype=np.float32), "NaN/Inf"),
        (np.array([1.0, 2.0], dtype=np.float64), "expected dtype float32"),
        (np.array([1.0], dtype=np.float32), "sent 1 values for 2 owned"),
    ],
)
def test_malformed_owned_values_are_rejected(values: np.ndarray, expected: str) -> None:
    # Prepare
    mask = torch.tensor([True, False, True])
    # Execute / Assert
    with pytest.raises(PayloadError, match=expected) as err:
        codec.decode_owned_values({f"{NAME}::owned": values}, {NAME: mask}, team="t")
    assert NAME in str(err.value)


def test_owned_values_missing_tensor_is_rejected() -> None:
    # Prepare
    masks = {NAME: torch.tensor([True]), OTHER: torch.tensor([False])}
    # Execute / Assert
    with pytest.raises(PayloadError, match=f"{OTHER}: missing"):
        codec.decode_owned_values({f"{NAME}::owned": np.ones(1, np.float32)}, masks)


@pytest.mark.parametrize(
    ("bits", "expected"),
    [
        (np.zeros(14, dtype=np.uint8), "truncated"),
        (np.zeros(16, dtype=np.uint8), "oversized"),
        (np.zeros(15, dtype=np.int16), "expected dtype uint8"),
        (np.zeros((3, 5), dtype=np.uint8), "1-D"),
    ],
)
def test_malformed_mask_is_rejected(bits: np.ndarray, expected: str) -> None:
    # Prepare: (6, 20) = 120 elements -> 15 bytes
    payload = {f"{NAME}::mask": bits}
    # Execute / Assert
    with pytest.raises(PayloadError, match=expected) as err:
        codec.decode_mask(payload, {NAME: (6, 20)})
    assert NAME in str(err.value)


@pytest.mark.parametrize(
    ("array", "expected"),
    [
        (np.zeros((6, 19), dtype=np.float32), "truncated"),
        (np.zeros((6, 21), dtype=np.float32), "oversized"),
        (np.zeros((20, 6), dtype=np.float32), "reshaped"),
        (np.full((6, 20), np.nan, dtype=np.float32), "120 NaN/Inf"),
        (np.zeros((6, 20), dtype=np.int32), "expected dtype"),
        (np.zeros((6, 20), dtype=">f4"), "expected dtype"),
    ],
)
def test_malformed_dense_is_rejected(array: np.ndarray, expected: str) -> None:
    # Prepare
    payload = {f"{NAME}::dense": array, f"{OTHER}::dense": np.zeros(20, dtype=np.float32)}
    # Execute / Assert
    with pytest.raises(PayloadError, match=expected) as err:
        codec.decode_dense(payload, SHAPES, team="ops")
    assert NAME in str(err.value) and "team 'ops'" in str(err.value)


def test_dense_bf16_inf_is_rejected() -> None:
    # Prepare
    state = {OTHER: torch.full((20,), float("inf"), dtype=torch.bfloat16)}
    # Execute / Assert
    with pytest.raises(PayloadError, match=f"{OTHER}::bf16.*NaN/Inf"):
        codec.decode_dense(codec.encode_dense(state), {OTHER: (20,)})
