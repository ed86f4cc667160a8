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
