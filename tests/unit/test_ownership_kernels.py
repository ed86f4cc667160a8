"""The buffered per-chunk kernels give the owners the plain torch formulation gives, bit for bit:
random weights with ties, zero columns and zero rows, every team count, reused buffers."""

from __future__ import annotations

import pytest
import torch

from medusa_fed.deltas import SparseDelta
from medusa_fed.ownership import assign_ownership
from medusa_fed.ownership.kernels import ChunkKernel, owners_for_chunk, priced_argmax, select_u8
from medusa_fed.ownership.ownership_map import NO_OWNER
from medusa_fed.ownership.synthetic import synthetic_probes


def reference_owners(w: torch.Tensor, u: torch.Tensor, policy: str, unselected: str):
    """The kernels as first written (cumsum over dim 0, masked_fill_, where): the yardstick."""
    k = w.shape[0]
    if policy == "argmax":
        best, owner = w[0].clone(), torch.zeros(w.shape[1], dtype=torch.uint8)
        for i in range(1, k):
            better = w[i] > best
            owner.masked_fill_(better, i)
            torch.maximum(best, w[i], out=best)
        has = best > 0
    else:
        cum = w.cumsum(0)
        total = cum[-1]
        has = total > 0
        x = torch.minimum(u * total, torch.nextafter(total, torch.zeros_like(total)))
        owner = torch.zeros(w.shape[1], dtype=torch.uint8)
        for i in range(k - 1):
            owner += cum[i] <= x
    if unselected == "random":
        fill = (u * k).clamp_(max=k - 1).to(torch.uint8)
    else:
        fill = torch.full_like(owner, NO_OWNER)
    return torch.where(has, owner, fill)


def reference_priced(w: torch.Tensor, lam: torch.Tensor):
    best = torch.full((w.shape[1],), -torch.inf)
    owner = torch.zeros(w.shape[1], dtype=torch.uint8)
    for i in range(w.shape[0]):
        score = torch.where(w[i] > 0, w[i] - lam[i], -torch.inf)
        owner.masked_fill_(score > best, i)
        torch.maximum(best, score, out=best)
    return best, owner


def _weights(k: int, n: int, seed: int) -> torch.Tensor:
    """Candidate weights with exact ties (a few magnitudes), zeros, wide ranges, a zero row."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(k, n, generator=g).abs() * 10.0 ** torch.randint(-6, 7, (k, n), generator=g)
    w[:, : n // 4] = torch.randint(0, 3, (k, n // 4), generator=g).float() * 0.1  # ties
    w[torch.rand(k, n, generator=g) < 0.3] = 0.0  # not a candidate
    if k > 2:
        w[1] = 0.0  # a team with no candidate element
    return w


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 8, 16])
@pytest.mark.parametrize("policy", ["proportional", "argmax"])
@pytest.mark.parametrize("unselected", ["random", "frozen"])
def test_kernels_match_the_plain_formulation_bit_for_bit(k, policy, unselected):
    kernel = ChunkKernel(k, 5000)  # wider than the chunks: buffers are sliced and reused
    for seed, n in enumerate([4999, 1, 3000]):
        w = _weights(k, n, seed)
        u = torch.rand(n, generator=torch.Generator().manual_seed(seed + 100))
        u[:7] = torch.tensor([0.0, 1 - 2**-24, 0.5, 0.25, 0.75, 1e-9, 0.999])[: min(7, n)]
        expected = reference_owners(w, u, policy, unselected)
        assert torch.equal(kernel.owners(w, u, policy, unselected), expected)
        assert torch.equal(owners_for_chunk(w, u, policy, unselected), expected)


@pytest.mark.parametrize("k", [1, 3, 8])
def test_priced_argmax_matches_the_plain_formulation(k):
    kernel = ChunkKernel(k, 4000)
    for seed in range(3):
        w = _weights(k, 3999, seed)
        lam = torch.rand(k, generator=torch.Generator().manual_seed(seed)) * 0.2
        lam[0] = 0.1  # ties between w - lam scores
        best, owner = reference_priced(w, lam)
        found_best, found_owner = priced_argmax(w, lam, kernel)
        assert torch.equal(found_best, best)
        assert torch.equal(found_owner, owner)


def test_select_u8_is_where_over_the_whole_byte_range():
    a = torch.arange(256, dtype=torch.uint8)
    b = a.flip(0).clone()
    cond = torch.arange(256) % 3 == 0
    out, tmp = torch.empty_like(a), torch.empty_like(a)
    assert torch.equal(select_u8(cond, a, b, out, tmp), torch.where(cond, a, b))


# SHA-256 (first 32 hex digits) of the owner map of every policy / unselected rule, with and
# without an uncontrolled team; "c" spans two chunks (the last one partial). The rules that read
# no uniform (argmax / frozen) and balanced are those of the code before the buffered kernels
# (commit 97002bc): candidate weights, direction rule and argmax are unchanged since. The rules
# that draw (proportional; argmax / random's fill) are pinned since their uniforms come from the
# counter-based stream (kernels.counter_uniforms), which the C kernel and its torch twin share.
PINNED = {
    "proportional/random/ctrl": "cf488884dc2a2cbe6bd779d561746122",
    "proportional/frozen/ctrl": "45f5afa3e9b89d42fd02d5706351b587",
    "argmax/random/ctrl": "5c0558c3be064938ac6f488a739bfd71",
    "argmax/frozen/ctrl": "9d0b38650fde83a1b5d2aaffc7d71f57",
    "balanced/random/ctrl": "ca040a383bfb7e0e284bab95aac3ed10",
    "balanced/frozen/ctrl": "c4e375b630bc326b99d0144df7fd6e44",
    "proportional/random/unc": "4eee280c4256bf4538c980dd857d90cc",
    "proportional/frozen/unc": "1db2582d8d7669eb0802054777f88530",
    "argmax/random/unc": "229219b6e0845ffbafcb085a08e9ef5d",
    "argmax/frozen/unc": "d7db5eaf9c5c3f92a8d41a537431ff5c",
    "balanced/random/unc": "90c063bb2b985aed49c7598abd7ad57c",
    "balanced/frozen/unc": "895b1864aace67855cdc1d04ccf2ab2e",
}


@pytest.mark.parametrize(
    "case,kernel",
    [
        (c, k)
        for c in sorted(PINNED)
        for k in ("native", "torch")
        if "balanced" not in c or k == "torch"
    ],
)  # balanced runs the torch kernels only
def test_assignment_is_the_pinned_map_with_either_kernel(case, kernel, monkeypatch):
    import hashlib

    from medusa_fed import native

    if kernel == "native" and native.library() is None:
        pytest.skip("no C compiler here: the torch twin is what runs")
    if kernel == "torch":
        monkeypatch.setattr(native, "library", lambda: None)
    policy, unselected, kind = case.split("/")
    shapes = {"a": (300, 70), "b": (5000,), "c": (2100, 2000)}
    teams = [f"t{i}" for i in range(4 if kind == "unc" else 3)]
    probes = synthetic_probes(shapes, teams, 0.3, seed=len(teams))
    for t in teams:  # few magnitudes: exact ties between teams are common
        for n, d in probes[t].items():
            v = (d.values * 2).round() / 2
            v[v == 0] = 0.5
            probes[t][n] = SparseDelta(d.shape, d.indices, v)
    controlled = {t: not (kind == "unc" and t == teams[-1]) for t in teams}
    found = assign_ownership(probes, shapes, controlled, policy, unselected, seed=3)  # type: ignore[arg-type]
    h = hashlib.sha256()
    for n in sorted(found.owners):
        h.update(found.owners[n].numpy().tobytes())
    assert h.hexdigest()[:32] == PINNED[case]
