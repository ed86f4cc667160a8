"""The lacking down-link's payload (medusa_fed.codec.downlink): a team rebuilds the weights from
the values it lacks and its own total, bit for bit at fp32; every malformed array is refused with
one line naming it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medusa_fed.codec.downlink import decode_lacking, encode_lacking, fingerprint, owned_vectors
from medusa_fed.errors import PayloadError


def _setup(seed: int = 0) -> tuple[dict[str, torch.Tensor], ...]:
    g = torch.Generator().manual_seed(seed)
    shapes = {"a.weight": (6, 5), "b.bias": (7,)}
    base = {n: torch.randn(s, generator=g) for n, s in shapes.items()}
    owner = {n: torch.randint(0, 3, s, generator=g) for n, s in shapes.items()}
    totals = [
        {n: torch.randn(s, generator=g) * (owner[n] == i) for n, s in shapes.items()}
        for i in range(3)
    ]
    merged = {n: base[n] + sum(t[n] for t in totals) for n in shapes}
    mask = {n: owner[n] == 0 for n in shapes}
    return base, mask, totals[0], merged


def test_fp32_rebuilds_the_weights_bit_for_bit_and_sends_only_unowned_values():
    # Prepare
    base, mask, own_total, merged = _setup()
    own = owned_vectors(own_total, mask)
    # Execute
    payload = encode_lacking(merged, base, mask, own_total)
    rebuilt = decode_lacking(payload, base, mask, own)
    # Assert
    for name, m in mask.items():
        assert payload[f"{name}::lack"].shape == (int((~m).sum()),)
        assert torch.equal(rebuilt[name].view(torch.int32), merged[name].view(torch.int32))
    assert fingerprint(rebuilt) == fingerprint(merged)


def test_owned_values_that_are_not_base_plus_own_travel_as_fixes():
    # Prepare: an uncontrolled team's sign election moved two owned elements
    base, mask, own_total, merged = _setup(1)
    own = owned_vectors(own_total, mask)
    where = torch.nonzero(mask["a.weight"].reshape(-1)).reshape(-1)[:2]
    merged["a.weight"].view(-1)[where] += 0.5
    # Execute
    payload = encode_lacking(merged, base, mask, own_total)
    rebuilt = decode_lacking(payload, base, mask, own)
    # Assert
    assert payload["a.weight::fix-at"].tolist() == where.tolist()
    assert "b.bias::fix-at" not in payload
    assert fingerprint(rebuilt) == fingerprint(merged)


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_half_precision_sends_half_the_bytes_and_keeps_owned_values_exact(dtype):
    # Prepare
    base, mask, own_total, merged = _setup(2)
    own = owned_vectors(own_total, mask)
    # Execute
    payload = encode_lacking(merged, base, mask, own_total, dtype)  # type: ignore[arg-type]
    rebuilt = decode_lacking(payload, base, mask, own, dtype)  # type: ignore[arg-type]
    # Assert
    for name, m in mask.items():
        assert payload[f"{name}::lack"].itemsize == 2
        assert torch.equal(rebuilt[name][m], merged[name][m])
        error = (rebuilt[name] - merged[name]).abs().max()
        scale = (merged[name] - base[name]).abs().max()
        assert 0 < error <= scale * (2**-7 if dtype == "bf16" else 2**-10)
    assert fingerprint(rebuilt) != fingerprint(merged)


def _payload() -> tuple[dict[str, np.ndarray], dict[str, torch.Tensor], ...]:
    base, mask, own_total, merged = _setup(3)
    merged["a.weight"].view(-1)[torch.nonzero(mask["a.weight"].reshape(-1))[0]] += 1.0
    own = owned_vectors(own_total, mask)
    return encode_lacking(merged, base, mask, own_total), base, mask, own


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda p: p.update({"a.weight::lack": p["a.weight::lack"][:-1]}), "entries, found"),
        (lambda p: p["b.bias::lack"].__setitem__(0, np.nan), r"expected finite values, found 1"),
        (lambda p: p.update({"b.bias::lack": p["b.bias::lack"].astype(np.float64)}), "dtype"),
        (lambda p: p.pop("b.bias::lack"), "missing from the payload"),
        (lambda p: p.pop("a.weight::fix"), "expected both fix-at and fix"),
        (lambda p: p["a.weight::fix-at"].__setitem__(0, 10**6), "ascending positions in"),
        (lambda p: p["a.weight::fix"].__setitem__(0, np.inf), "expected finite values"),
        (lambda p: p.update({"c::lack": np.zeros(1, np.float32)}), "unknown tensor name"),
    ],
)
def test_a_malformed_payload_is_refused_in_one_line(tamper, message):
    # Prepare
    payload, base, mask, own = _payload()
    tamper(payload)
    # Execute / Assert
    with pytest.raises(PayloadError, match=message) as info:
        decode_lacking(payload, base, mask, own)
    assert "\n" not in str(info.value)


def test_a_fix_on_an_element_the_team_does_not_own_is_refused():
    payload, base, mask, own = _payload()
    unowned = int(torch.nonzero(~mask["a.weight"].reshape(-1))[0])
    payload["a.weight::fix-at"] = np.array([unowned], dtype=np.int64)
    payload["a.weight::fix"] = np.array([1.0], dtype=np.float32)
    with pytest.raises(PayloadError, match="expected owned positions only"):
        decode_lacking(payload, base, mask, own)


def test_an_own_total_that_does_not_fit_the_mask_is_refused():
    payload, base, mask, own = _payload()
    short = {**own, "b.bias": own["b.bias"][:-1]}
    with pytest.raises(PayloadError, match="own values for"):
        decode_lacking(payload, base, mask, short)


def test_the_fingerprint_sees_one_flipped_bit_and_a_renamed_tensor():
    base = _setup()[0]
    flipped = {n: t.clone() for n, t in base.items()}
    flipped["b.bias"].view(torch.int32)[3] ^= 1
    renamed = {("c" if n == "b.bias" else n): t for n, t in base.items()}
    assert len({fingerprint(base), fingerprint(flipped), fingerprint(renamed)}) == 3
