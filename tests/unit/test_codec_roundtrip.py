"""Round trips and byte costs of every codec payload kind (layer 1: numpy/torch only)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from medusa_fed import codec
from medusa_fed.deltas import SparseDelta, top_d
from medusa_fed.errors import PayloadError

SETTINGS = settings(max_examples=40, deadline=None)
shapes_st = st.lists(st.integers(1, 40), min_size=1, max_size=3).map(tuple)


def _random_delta(shape: tuple[int, ...], seed: int, scale: float) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen) * scale


@SETTINGS
@given(
    shape=shapes_st,
    density=st.floats(0.01, 1.0),
    seed=st.integers(0, 2**16),
    log_scale=st.floats(-9, 9),
)
def test_sparse_round_trip_keeps_indices_exactly_and_values_to_fp16_precision(
    shape: tuple[int, ...], density: float, seed: int, log_scale: float
) -> None:
    # Prepare
    sparse = top_d(_random_delta(shape, seed, 10.0**log_scale), density)
    # Execute
    decoded = codec.decode_sparse_delta(codec.encode_sparse_delta({"w": sparse}), {"w": shape})
    # Assert
    out = decoded["w"]
    assert out.shape == shape
    assert torch.equal(out.indices, sparse.indices)
    assert out.values.dtype == torch.float32
    peak = float(sparse.values.abs().max()) if sparse.values.numel() else 0.0
    error = (out.values - sparse.values).abs()
    assert bool((error <= sparse.values.abs() * 2.0**-11 + peak * 2.0**-38).all())


@SETTINGS
@given(shape=shapes_st, density=st.floats(0.001, 1.0), seed=st.integers(0, 2**16))
def test_sparse_payload_costs_the_smaller_of_gaps_and_bitmap(
    shape: tuple[int, ...], density: float, seed: int
) -> None:
    # Prepare
    sparse = top_d(_random_delta(shape, seed, 1.0), density)
    n, k = sparse.numel, sparse.indices.numel()
    gaps = np.diff(sparse.indices.numpy(), prepend=0)
    peak_gap = int(gaps.max()) if k else 0
    width = 1 if peak_gap < 2**8 else 2 if peak_gap < 2**16 else 4
    # Execute
    payload = codec.encode_sparse_delta({"w": sparse})
    # Assert
    assert codec.payload_nbytes(payload) == 2 * k + 2 + min(width * k, math.ceil(n / 8))


def test_sparse_uses_a_bitmap_when_most_entries_are_kept() -> None:
    # Prepare
    sparse = top_d(torch.randn(64, 64) + 5.0, 1.0)
    # Execute
    payload = codec.encode_sparse_delta({"w": sparse})
    # Assert
    assert sorted(payload) == ["w::bits", "w::exp", "w::val"]
    assert payload["w::bits"].nbytes == 64 * 64 // 8


def test_sparse_values_beyond_fp16_range_stay_finite_and_close() -> None:
    # Prepare: fp16 max is 65504; a plain cast would turn these into inf
    values = torch.tensor([7.0e4, -1.0e5, 3.0e30, 1.0e-3], dtype=torch.float32)
    sparse = SparseDelta((10,), torch.tensor([1, 4, 6, 9]), values)
    # Execute
    payload = codec.encode_sparse_delta({"w": sparse})
    out = codec.decode_sparse_delta(payload, {"w": (10,)})["w"]
    # Assert
    assert bool(np.isfinite(payload["w::val"].astype(np.float32)).all())
    assert torch.allclose(out.values[2], values[2], rtol=2.0**-11)
    assert out.values[[0, 1, 3]].tolist() == [0.0, 0.0, 0.0]  # < 2**-29 of the peak: documented


def test_sparse_values_just_beyond_fp16_max_keep_their_precision() -> None:
    # Prepare
    values = torch.tensor([7.0e4, -1.0e5, 65504.0, 1.0], dtype=torch.float32)
    sparse = SparseDelta((4,), torch.arange(4), values)
    # Execute
    out = codec.decode_sparse_delta(codec.encode_sparse_delta({"w": sparse}), {"w": (4,)})["w"]
    # Assert
    assert torch.allclose(out.values, values, rtol=2.0**-11, atol=0.0)


def test_sparse_keeps_tiny_deltas_that_plain_fp16_would_flush() -> None:
    # Prepare: 1e-8 is below fp16's smallest subnormal (6e-8)
    values = torch.tensor([1.0e-8, -3.0e-8, 2.5e-8])
    sparse = SparseDelta((5,), torch.tensor([0, 2, 4]), values)
    # Execute
    out = codec.decode_sparse_delta(codec.encode_sparse_delta({"w": sparse}), {"w": (5,)})["w"]
    # Assert
    assert torch.allclose(out.values, values, rtol=2.0**-11, atol=0.0)


def test_sparse_empty_and_dotted_names_round_trip() -> None:
    # Prepare
    name = "encoder.layer.0.attention.self.query.weight"
    empty = SparseDelta((4, 3), torch.zeros(0, dtype=torch.int64), torch.zeros(0))
    # Execute
    out = codec.decode_sparse_delta(codec.encode_sparse_delta({name: empty}), {name: (4, 3)})
    # Assert
    assert out[name].indices.numel() == 0 and out[name].values.numel() == 0


def test_a_tensor_name_with_the_separator_is_refused() -> None:
    # Prepare
    sparse = SparseDelta((2,), torch.tensor([0]), torch.tensor([1.0]))
    # Execute / Assert
    with pytest.raises(PayloadError, match="a::b"):
        codec.encode_sparse_delta({"a::b": sparse})


def test_large_tensor_round_trips_in_both_formats() -> None:
    # Prepare: 300k elements, one sparse (gaps) and one dense-ish (bitmap)
    delta = _random_delta((600, 500), 0, 1e-4)
    payload = codec.encode_sparse_delta({"s": top_d(delta, 0.01), "d": top_d(delta, 0.5)})
    # Execute
    out = codec.decode_sparse_delta(payload, {"s": (600, 500), "d": (600, 500)})
    # Assert
    assert "s::gaps" in payload and "d::bits" in payload
    assert torch.equal(out["s"].indices, top_d(delta, 0.01).indices)
    assert torch.equal(out["d"].indices, top_d(delta, 0.5).indices)


@SETTINGS
@given(shape=shapes_st, p=st.floats(0.0, 1.0), seed=st.integers(0, 2**16))
def test_mask_round_trip_costs_ceil_n_over_8(shape: tuple[int, ...], p: float, seed: int) -> None:
    # Prepare
    gen = torch.Generator().manual_seed(seed)
    masks = {"m.0": torch.rand(shape, generator=gen) < p, "m.1": torch.rand(3, generator=gen) < p}
    # Execute
    payload = codec.encode_mask(masks)
    out = codec.decode_mask(payload, {"m.0": shape, "m.1": (3,)})
    # Assert
    assert codec.payload_nbytes(payload) == math.ceil(math.prod(shape) / 8) + 1
    assert all(torch.equal(out[k], masks[k]) for k in masks)


@SETTINGS
@given(shape=shapes_st, p=st.floats(0.0, 1.0), seed=st.integers(0, 2**16))
def test_owned_values_round_trip_costs_4_bytes_per_owned(
    shape: tuple[int, ...], p: float, seed: int
) -> None:
    # Prepare
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(shape, generator=gen) < p
    delta = torch.randn(shape, generator=gen) * mask
    # Execute
    payload = codec.encode_owned_values({"w": delta}, {"w": mask})
    out = codec.decode_owned_values(payload, {"w": mask}, team="legal")
    # Assert
    assert codec.payload_nbytes(payload) == 4 * int(mask.sum())
    assert torch.equal(out["w"], delta)


def test_owned_values_are_sent_in_row_major_mask_order() -> None:
    # Prepare
    mask = torch.tensor([[False, True, True], [True, False, False]])
    delta = torch.tensor([[0.0, 1.0, 2.0], [3.0, 0.0, 0.0]])
    # Execute
    payload = codec.encode_owned_values({"w": delta}, {"w": mask})
    # Assert
    assert payload["w::owned"].tolist() == [1.0, 2.0, 3.0]


def test_owned_values_refuse_a_delta_that_moved_unowned_elements() -> None:
    # Prepare
    mask = torch.tensor([True, False, False])
    delta = torch.tensor([1.0, 0.0, 5.0])
    # Execute / Assert
    with pytest.raises(PayloadError, match=r"w: .*found 1 moved"):
        codec.encode_owned_values({"w": delta}, {"w": mask})
    assert codec.encode_owned_values({"w": delta}, {"w": mask}, check_outside=False)[
        "w::owned"
    ].tolist() == [1.0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_dense_round_trip_is_bit_exact_in_the_sent_dtype(dtype: torch.dtype) -> None:
    # Prepare
    state = {"a.weight": torch.randn(5, 7).to(dtype), "a.bias": torch.randn(7).to(dtype)}
    shapes = codec.tensor_shapes(state)
    # Execute
    payload = codec.encode_dense(state)
    out = codec.decode_dense(payload, shapes, dtype=None)
    # Assert
    itemsize = torch.tensor([], dtype=dtype).element_size()
    assert codec.payload_nbytes(payload) == itemsize * 42
    assert all(out[k].dtype == dtype and torch.equal(out[k], state[k]) for k in state)
    assert codec.dense_fp32_nbytes(shapes) == 4 * 42


def test_dense_decodes_to_float32_by_default_and_accepts_unknown_shapes_when_asked() -> None:
    # Prepare
    head = {"classifier.weight": torch.randn(3, 4).to(torch.bfloat16)}
    # Execute
    out = codec.decode_dense(codec.encode_dense(head), None)
    # Assert
    assert out["classifier.weight"].dtype == torch.float32
    assert torch.equal(out["classifier.weight"], head["classifier.weight"].float())


def test_mask_bits_are_little_endian_within_each_byte_with_zero_padding() -> None:
    # Prepare: element 8i+j is bit j of byte i
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[0, 0] = True  # element 0 -> byte 0, bit 0
    mask[1, 4] = True  # element 9 -> byte 1, bit 1
    # Execute
    payload = codec.encode_mask({"m": mask})
    # Assert
    assert payload["m::mask"].tolist() == [0x01, 0x02]
