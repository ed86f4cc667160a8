"""The optional C kernels (medusa_fed.native): built once per machine, cached, bit for bit their
torch twins, and replaced by the twins wherever they cannot be built."""

from __future__ import annotations

import logging
import shutil

import pytest
import torch

from medusa_fed import native
from medusa_fed.deltas import SparseDelta
from medusa_fed.ownership import assign_ownership
from medusa_fed.ownership.kernels import counter_uniforms
from medusa_fed.ownership.synthetic import synthetic_probes

HAS_CC = shutil.which("cc") is not None


@pytest.fixture
def fresh_library(monkeypatch, tmp_path):
    """library() rebuilt from scratch into an empty cache, and forgotten afterwards."""
    monkeypatch.setenv("MEDUSA_NATIVE_CACHE", str(tmp_path / "cache"))
    native.library.cache_clear()
    yield tmp_path / "cache"
    native.library.cache_clear()


def _native_uniforms(key: int, start: int, n: int) -> torch.Tensor:
    lib = native.library()
    assert lib is not None
    out = torch.empty(n)
    lib.medusa_uniforms(key, start, n, out.data_ptr())
    return out


@pytest.mark.skipif(not HAS_CC, reason="no C compiler: the torch twins run")
@pytest.mark.parametrize("key", [0, 2**64 - 1, 0x243F6A8885A308D3])
@pytest.mark.parametrize("start", [0, 2**32 - 2500, 10**12])
def test_native_uniforms_are_the_torch_twin_bit_for_bit(key, start):
    assert torch.equal(_native_uniforms(key, start, 5000), counter_uniforms(key, start, 5000))


def test_an_elements_uniform_does_not_depend_on_the_chunking():
    whole = counter_uniforms(77, 100, 1000)
    assert torch.equal(whole[300:700], counter_uniforms(77, 400, 400))
    assert torch.equal(whole[:1], counter_uniforms(77, 100, 1))


def test_counter_uniforms_are_uniform_and_independent():
    n = 1 << 20
    u = counter_uniforms(0x9E3779B97F4A7C15, 0, n)
    assert float(u.min()) >= 0.0 and float(u.max()) < 1.0
    # chi-square over 256 equal bins: df 255, P(X > 400) < 1e-8 for a uniform source
    counts = torch.bincount((u * 256).long(), minlength=256).double()
    chi2 = float(((counts - n / 256) ** 2 / (n / 256)).sum())
    assert chi2 < 400, chi2
    # every one of the 24 bits is set half the time; neighbours and other streams uncorrelated
    bits = (u * 2**24).long()
    for b in range(24):
        assert abs(float(((bits >> b) & 1).double().mean()) - 0.5) < 0.005, b
    v = counter_uniforms(0x9E3779B97F4A7C16, 0, n)  # the next key
    for a, b in ((u[:-1], u[1:]), (u, v)):
        r = torch.corrcoef(torch.stack([a.double(), b.double()]))[0, 1]
        assert abs(float(r)) < 0.01


def _probes(k: int, m: int, shapes: dict, seed: int) -> tuple[dict, dict]:
    teams = [f"c{i:02d}" for i in range(k)] + [f"u{i}" for i in range(m)]
    probes = synthetic_probes(shapes, teams, 0.3, seed=seed)
    for t in teams:  # few magnitudes: exact ties; one team's values in fp16
        for n, d in probes[t].items():
            v = (d.values * 2).round() / 2
            v[v == 0] = 0.5
            if t == teams[0]:
                v = v.half()
            probes[t][n] = SparseDelta(d.shape, d.indices, v)
    if k > 2:  # a tensor one team did not send
        probes[teams[1]].pop(sorted(shapes)[0])
    return probes, {t: t.startswith("c") for t in teams}


@pytest.mark.skipif(not HAS_CC, reason="no C compiler: the torch twins run")
@pytest.mark.parametrize("k,m", [(1, 0), (2, 0), (3, 1), (5, 2), (8, 0), (17, 1)])
def test_native_assignment_is_the_torch_twin_bit_for_bit(k, m, monkeypatch):
    import medusa_fed.ownership.assign as assign_mod
    import medusa_fed.ownership.candidates as cand_mod

    # chunks of 9000 and torch blocks of 1000: ranges crossing the C kernel's 4096-column blocks
    monkeypatch.setattr(cand_mod, "CHUNK", 9000)
    monkeypatch.setattr(assign_mod, "BLOCK", 1000)
    shapes = {"a": (20001,), "b": (3, 7), "c": (130, 100)}
    probes, controlled = _probes(k, m, shapes, seed=k + 10 * m)
    for policy in ("proportional", "argmax"):
        for unselected in ("random", "frozen"):
            fast = assign_ownership(probes, shapes, controlled, policy, unselected, seed=5)  # type: ignore[arg-type]
            with monkeypatch.context() as mp:
                mp.setattr(native, "library", lambda: None)
                twin = assign_ownership(probes, shapes, controlled, policy, unselected, seed=5)  # type: ignore[arg-type]
            for name in shapes:
                assert torch.equal(fast.owners[name], twin.owners[name]), (policy, unselected)


def test_medusa_native_0_turns_the_kernels_off(fresh_library, monkeypatch):
    monkeypatch.setenv("MEDUSA_NATIVE", "0")
    assert native.library() is None
    assert not fresh_library.exists()  # nothing was built


def test_no_compiler_falls_back_with_one_line(fresh_library, monkeypatch, caplog):
    monkeypatch.setenv("CC", "/nonexistent/cc")
    with caplog.at_level(logging.INFO, logger="medusa_fed.native"):
        assert native.library() is None
    assert any("no C compiler" in r.getMessage() for r in caplog.records)


@pytest.mark.skipif(not HAS_CC, reason="no C compiler")
def test_a_failed_build_falls_back_and_leaves_no_partial_file(
    fresh_library, monkeypatch, tmp_path, caplog
):
    bad = tmp_path / "kernels.c"
    bad.write_text("int this is not C;\n")
    monkeypatch.setattr(native, "SOURCE", bad)
    with caplog.at_level(logging.WARNING, logger="medusa_fed.native"):
        assert native.library() is None
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "build or load failed" in lines[0] and "\n" not in lines[0]
    assert list(fresh_library.iterdir()) == []  # the temporary file is gone
    # the assignment still runs, on the torch twin
    shapes = {"a": (50,)}
    probes, controlled = _probes(2, 0, shapes, seed=0)
    assert assign_ownership(probes, shapes, controlled).owners["a"].shape == (50,)


@pytest.mark.skipif(not HAS_CC, reason="no C compiler")
def test_the_library_is_built_once_into_the_cache(fresh_library):
    assert native.library() is not None
    built = list(fresh_library.iterdir())
    assert len(built) == 1 and built[0].suffix == ".so"
    stamp = built[0].stat().st_mtime_ns
    native.library.cache_clear()
    assert native.library() is not None  # a new process: loaded, not rebuilt
    assert [p.stat().st_mtime_ns for p in fresh_library.iterdir()] == [stamp]


# ---- the merge's fused passes: the same values, counts and errors as the torch ops ----


def _special(n: int, seed: int) -> torch.Tensor:
    """fp32 values with zeros of both signs, a few magnitudes (ties) and wide ranges."""
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(n, generator=g) * 10.0 ** torch.randint(-4, 5, (n,), generator=g).float()
    t[torch.rand(n, generator=g) < 0.4] = 0.0
    t[torch.rand(n, generator=g) < 0.1] = -0.0
    q = torch.rand(n, generator=g) < 0.3
    t[q] = (t[q] * 2).round() / 2
    return t


@pytest.fixture(params=["one piece", "threads"])
def pieces(request, monkeypatch):
    """Each fused op whole, and split over two threads in uneven pieces."""
    from medusa_fed.merging import fused

    if request.param == "threads":
        monkeypatch.setattr(fused, "PARALLEL_MIN", 1000)
        monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
    return request.param


@pytest.mark.skipif(not HAS_CC, reason="no C compiler")
def test_fused_counts_and_adds_are_the_torch_ops(pieces, monkeypatch):
    from medusa_fed.merging import fused

    a, b = _special(10_007, 1), _special(10_007, 2)
    b[5], b[6] = float("inf"), float("nan")
    for run_native in (True, False):
        with monkeypatch.context() as mp:
            if not run_native:
                mp.setattr(native, "library", lambda: None)
            acc = a.clone()
            got = (
                fused.count_nonzero(b),
                fused.add_count_(acc, b),
                fused.count_nonzero_finite(a),
                fused.count_nonzero_finite(acc),
            )
            base = _special(10_007, 3)
            changed = fused.add_changed_(acc, base)
        want_acc = a + b
        assert got == (
            int((b != 0).sum()),
            int((b != 0).sum()),
            (int((a != 0).sum()), True),
            (int((want_acc != 0).sum()), False),
        )
        merged = want_acc + base
        assert torch.equal(acc.view(torch.int32), merged.view(torch.int32))  # bits, NaN included
        assert changed == int((merged != base).sum())


def _ties_case(seed: int, k: int, n: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    base = _special(n, 100 + seed)
    deltas = {f"b{i}": _special(n, 10 * seed + i) for i in range(k)}
    if seed == 1:  # seven magnitudes: every cut falls inside a tie
        g = torch.Generator().manual_seed(seed)
        deltas = {b: torch.randint(-7, 8, (n,), generator=g).float() / 2 for b in deltas}
    return base, deltas


@pytest.mark.skipif(not HAS_CC, reason="no C compiler")
@pytest.mark.parametrize(
    "density,scale", [(0.2, 1.0), (0.37, 0.7), (1.0, 1.0), (0.05, 2.0), (0.9, 1.0)]
)
def test_native_ties_is_the_torch_ties(density, scale, pieces, monkeypatch):
    from medusa_fed.merging import MergeSpec
    from medusa_fed.merging.merge import merge_tensor_with_report
    from medusa_fed.merging.sparsify import magnitude_cut

    spec = MergeSpec("ties", density=density, scale=scale)
    budget_path = False
    for seed, k in ((0, 1), (1, 3), (2, 4)):
        base, deltas = _ties_case(seed, k, 20_011)
        if seed == 2:
            deltas["b3"] = torch.zeros(20_011)  # an all-zero branch: a zero threshold
        cut = magnitude_cut(deltas["b0"], density)
        budget_path |= cut is not None and not cut.keeps_whole_tie
        fast, fast_report = merge_tensor_with_report("w", base, deltas, spec)
        with monkeypatch.context() as mp:
            mp.setattr(native, "library", lambda: None)
            slow, slow_report = merge_tensor_with_report("w", base, deltas, spec)
        assert torch.equal(fast.view(torch.int32), slow.view(torch.int32)), (seed, k)
        assert fast_report == slow_report
    if density in (0.2, 0.37):  # quantised deltas: the cut falls inside a tie, kept by position
        assert budget_path


@pytest.mark.skipif(not HAS_CC, reason="no C compiler")
def test_native_medusa_merge_keeps_the_torch_errors(monkeypatch):
    from medusa_fed.errors import MergeError
    from medusa_fed.merging import MergeSpec
    from medusa_fed.merging.merge import merge_tensor

    base = torch.zeros(100)
    clash = {"a": torch.ones(100), "b": torch.cat([torch.zeros(99), torch.ones(1)])}
    bad = {"a": torch.cat([torch.zeros(99), torch.tensor([float("nan")])]), "b": torch.zeros(100)}
    for deltas in (clash, bad):
        messages = []
        for run_native in (True, False):
            with monkeypatch.context() as mp:
                if not run_native:
                    mp.setattr(native, "library", lambda: None)
                with pytest.raises(MergeError) as err:
                    merge_tensor("w", base, deltas, MergeSpec("medusa"))
                messages.append(str(err.value))
        assert messages[0] == messages[1]


@pytest.mark.skipif(not HAS_CC, reason="no C compiler")
@pytest.mark.parametrize("k,m", [(1, 0), (2, 0), (4, 1), (9, 2)])
def test_native_owners_at_hand_picked_draws_are_the_torch_kernels(k, m):
    """Draws at the edges (0, the largest below 1) and where u * total lands exactly on a
    cumulative weight (few magnitudes): the C kernel and ChunkKernel agree element by element."""
    from medusa_fed.ownership.candidates import build_candidates
    from medusa_fed.ownership.kernels import ChunkKernel, native_owners

    lib = native.library()
    assert lib is not None
    n = 9_000  # crosses the C kernel's 4096-column blocks
    probes, controlled = _probes(k, m, {"w": (n,)}, seed=k)
    cands = build_candidates(probes, {"w": (n,)}, controlled)
    g = torch.Generator().manual_seed(k)
    u = torch.tensor([0.0, 0.25, 0.5, 0.75, 1 - 2**-24])[torch.randint(0, 5, (n,), generator=g)]
    u[::3] = torch.rand(len(u[::3]), generator=g)
    w = cands.weights("w", 0, n)
    for policy in ("proportional", "argmax"):
        for unselected in ("random", "frozen"):
            want = ChunkKernel(k, n).owners(w, u, policy, unselected)
            got = torch.empty(n, dtype=torch.uint8)
            native_owners(lib, cands, "w", 0, n, 0, policy, unselected, got, u=u)
            assert torch.equal(got, want), (policy, unselected)


def test_fused_ops_refuse_tensors_of_different_sizes():
    from medusa_fed.merging import fused

    with pytest.raises(ValueError, match="one size"):
        fused.add_count_(torch.zeros(10), torch.zeros(11))
    with pytest.raises(ValueError, match="one size"):
        fused.add_changed_(torch.zeros(10), torch.zeros(9))
