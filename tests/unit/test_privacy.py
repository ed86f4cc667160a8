"""The privacy option's mechanism: clip to an L2 norm, then Gaussian noise from OS randomness."""

from __future__ import annotations

import pytest
import torch

from medusa_fed.deltas import SparseDelta
from medusa_fed.errors import ConfigError
from medusa_fed.privacy import clip_and_noise, private_delta, private_probe
from medusa_fed.run_config import RunConfig


def _norm(ts) -> float:  # type: ignore[no-untyped-def]
    return sum(float(t.double().square().sum()) for t in ts) ** 0.5


def test_clip_scales_jointly_and_leaves_small_uploads_alone():
    big = [torch.full((3,), 4.0), torch.full((4,), 3.0)]  # norm sqrt(48 + 36)
    out = clip_and_noise(big, clip=2.0, noise=0.0)
    assert _norm(out) == pytest.approx(2.0)
    assert torch.allclose(out[0] / out[1][0], torch.full((3,), 4 / 3))  # direction kept
    small = [torch.tensor([0.1, -0.2])]
    assert torch.equal(clip_and_noise(small, clip=2.0, noise=0.0)[0], small[0])


def test_noise_has_the_announced_scale_and_is_not_reproducible():
    zeros = [torch.zeros(200_000)]
    a = clip_and_noise(zeros, clip=0.5, noise=2.0)[0]
    b = clip_and_noise(zeros, clip=0.5, noise=2.0)[0]
    assert float(a.std()) == pytest.approx(1.0, rel=0.02)  # noise x clip
    assert not torch.equal(a, b)  # OS randomness: the coordinator cannot replay it


def test_a_probe_keeps_its_indices_and_a_delta_stays_zero_off_its_mask():
    d = SparseDelta((6,), torch.tensor([1, 4]), torch.tensor([3.0, 4.0]))
    p = private_probe({"t": d}, clip=1.0, noise=0.0)["t"]
    assert torch.equal(p.indices, d.indices) and _norm([p.values]) == pytest.approx(1.0)
    delta = {"w": torch.arange(6.0).reshape(2, 3)}
    mask = {"w": torch.tensor([[True, False, True], [False, True, False]])}
    out = private_delta(delta, mask, clip=0.1, noise=1.0)["w"]
    assert torch.count_nonzero(out[~mask["w"]]) == 0
    assert torch.count_nonzero(out[mask["w"]]) == 3


def test_bad_privacy_settings_are_refused_at_start():
    with pytest.raises(ConfigError, match="dp-noise 1.0 needs dp-clip > 0"):
        RunConfig.from_mapping({"dp-noise": 1.0})
    with pytest.raises(ConfigError, match="dp-clip and dp-noise must be >= 0"):
        RunConfig.from_mapping({"dp-clip": -1})
