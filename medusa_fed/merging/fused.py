"""One-pass versions of the merge's per-element steps: a C loop where :mod:`medusa_fed.native`
is built, else the torch ops they replace (the same results, bit for bit and count for count).

Each function takes fp32 tensors of one shape; the C loop runs on contiguous CPU tensors (split
over ``torch.get_num_threads()`` threads for large ones: ctypes releases the GIL), anything else
takes the torch path. Medusa's disjoint sum reads each branch's delta once for its count and its
add, and the merged tensor once for the base add and the changed count, where torch makes a pass
per op and a bool temporary per comparison.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

from medusa_fed import native
from medusa_fed.merging.sparsify import MagnitudeCut, _cut_in, _top_bucket, trim_count

T = TypeVar("T")
PARALLEL_MIN = 1 << 21  # elements: below this one thread does the whole tensor
_pools: dict[int, ThreadPoolExecutor] = {}


def _one_size(*tensors: torch.Tensor) -> None:
    """The C loops index every tensor alike: refuse tensors of different sizes."""
    if len({t.numel() for t in tensors}) > 1:
        raise ValueError(
            f"fused: expected tensors of one size, found {[t.numel() for t in tensors]}"
        )


def native_for(*tensors: torch.Tensor) -> ctypes.CDLL | None:
    """The C kernels when they are built and every tensor is a contiguous fp32 CPU tensor (of
    one size: a ValueError otherwise)."""
    _one_size(*tensors)
    if any(t.device.type != "cpu" or t.dtype != torch.float32 or not t.is_contiguous()
           for t in tensors):  # fmt: skip
        return None
    return native.library()


def _split(n: int, run: Callable[[int, int], T]) -> list[T]:
    """``run(start, count)`` over ``[0, n)``, one piece per thread; the pieces' results."""
    threads = torch.get_num_threads()
    if threads <= 1 or n < PARALLEL_MIN:
        return [run(0, n)]
    pool = _pools.get(threads) or _pools.setdefault(
        threads, ThreadPoolExecutor(threads, thread_name_prefix="fused")
    )
    step = -(-n // threads)
    return list(pool.map(lambda s: run(s, min(step, n - s)), range(0, n, step)))


def count_nonzero(t: torch.Tensor) -> int:
    """Nonzero entries of ``t`` (on a bool copy in torch: ``count_nonzero`` on floats that mix
    zeros and nonzeros branches per element, 6 ns vs 2.2)."""
    lib = native_for(t)
    if lib is None:
        return int(torch.count_nonzero(t != 0))
    p = t.data_ptr()
    return sum(_split(t.numel(), lambda s, c: int(lib.medusa_count(p + 4 * s, c))))


def add_count_(acc: torch.Tensor, d: torch.Tensor) -> int:
    """``acc += d`` in place; returns the nonzeros of ``d``."""
    lib = native_for(acc, d)
    if lib is None:
        nz = int(torch.count_nonzero(d != 0))
        acc.add_(d)
        return nz
    pa, pd = acc.data_ptr(), d.data_ptr()
    return sum(
        _split(acc.numel(), lambda s, c: int(lib.medusa_add_count(pa + 4 * s, pd + 4 * s, c)))
    )


def count_nonzero_finite(t: torch.Tensor) -> tuple[int, bool]:
    """``(nonzeros of t, whether every entry is finite)``."""
    lib = native_for(t)
    if lib is None:
        return int(torch.count_nonzero(t != 0)), bool(torch.isfinite(t).all())
    p = t.data_ptr()

    def run(s: int, c: int) -> tuple[int, int]:
        out = (ctypes.c_int64 * 2)()
        lib.medusa_count_finite(p + 4 * s, c, out)
        return int(out[0]), int(out[1])

    pieces = _split(t.numel(), run)
    return sum(nz for nz, _ in pieces), not any(bad for _, bad in pieces)


def add_changed_(acc: torch.Tensor, base: torch.Tensor) -> int:
    """``acc += base`` in place; returns how many entries of the sum differ from ``base`` (a NaN
    counts as changed), i.e. ``count_nonzero(acc + base != base)``."""
    lib = native_for(acc, base)
    if lib is None:
        acc.add_(base)
        return int(torch.count_nonzero(acc != base))
    pa, pb = acc.data_ptr(), base.data_ptr()
    return sum(
        _split(acc.numel(), lambda s, c: int(lib.medusa_add_changed(pa + 4 * s, pb + 4 * s, c)))
    )


# ---- TIES with the magnitude trim (methods.baseline_delta's passes, fused per branch) ----

_ALL_TIES = (1 << 63) - 1  # a tie budget that keeps every entry equal to the threshold


def _p(t: torch.Tensor, start: int = 0) -> int:
    return t.data_ptr() + t.element_size() * start


def magnitude_cut(lib: ctypes.CDLL, d: torch.Tensor, density: float) -> MagnitudeCut | None:
    """:func:`medusa_fed.merging.sparsify.magnitude_cut` of contiguous fp32 ``d`` by two C
    histogram passes (the same two radix passes, the same cut)."""
    n = d.numel()
    k = trim_count(n, density)
    if k >= n:
        return None

    def hist_high(s: int, c: int) -> torch.Tensor:
        h = torch.zeros(1 << 15, dtype=torch.int64)
        lib.medusa_hist_high(_p(d, s), c, _p(h))
        return h

    high, above = _top_bucket(torch.stack(_split(n, hist_high)).sum(0), k)

    def hist_low(s: int, c: int) -> torch.Tensor:
        h = torch.zeros(1 << 16, dtype=torch.int64)
        lib.medusa_hist_low(_p(d, s), c, high, _p(h))
        return h

    return _cut_in(torch.stack(_split(n, hist_low)).sum(0), high << 16, k - above)


def _trim(cut: MagnitudeCut | None) -> tuple[int, float, int]:
    """``(trim?, threshold, tie budget)`` of a cut, as :func:`sparsify.trim_` applies it."""
    if cut is None or (cut.keeps_whole_tie and cut.threshold == 0.0):
        return 0, 0.0, _ALL_TIES  # trim_ leaves the delta as it is
    return 1, cut.threshold, _ALL_TIES if cut.ties == cut.equal else cut.ties


def _pieces(n: int, ties: int, run: Callable[[int, int], T]) -> list[T]:
    # ties kept by position run in one piece: the budget is spent in order
    return _split(n, run) if ties == _ALL_TIES else [run(0, n)]


def ties_pass1(
    lib: ctypes.CDLL,
    d: torch.Tensor,
    cut: MagnitudeCut | None,
    touch: torch.Tensor,
    kept: torch.Tensor,
    acc: torch.Tensor,
) -> tuple[int, int]:
    """``touch += (d != 0)``, ``x = trim(d)``, ``kept += (x != 0)``, ``acc += x`` in one pass;
    returns the nonzeros of ``d`` and of ``x``."""
    _one_size(d, touch, kept, acc)
    trim, thr, ties = _trim(cut)

    def run(s: int, c: int) -> tuple[int, int]:
        out = (ctypes.c_int64 * 2)()
        lib.medusa_ties_pass1(
            _p(d, s), c, trim, thr, ties, _p(touch, s), _p(kept, s), _p(acc, s), out
        )
        return int(out[0]), int(out[1])

    pieces = _pieces(d.numel(), ties, run)
    return sum(r for r, _ in pieces), sum(k for _, k in pieces)


def ties_pass2(
    lib: ctypes.CDLL,
    d: torch.Tensor,
    cut: MagnitudeCut | None,
    acc: torch.Tensor,
    count: torch.Tensor,
    total: torch.Tensor,
) -> None:
    """``x = trim(d) * sign`` (sign +1 where ``acc >= 0``, else -1), ``count += (x > 0)``,
    ``total += max(x, 0)`` in one pass."""
    _one_size(d, acc, count, total)
    trim, thr, ties = _trim(cut)

    def run(s: int, c: int) -> None:
        lib.medusa_ties_pass2(_p(d, s), c, trim, thr, ties, _p(acc, s), _p(count, s), _p(total, s))

    _pieces(d.numel(), ties, run)


def ties_final(
    lib: ctypes.CDLL,
    acc: torch.Tensor,
    count: torch.Tensor,
    touch: torch.Tensor,
    kept: torch.Tensor,
    total: torch.Tensor,
    scale: float,
) -> tuple[int, int, int]:
    """``total = total * sign / max(count, 1) * scale`` in place; returns the elements with
    ``touch > 1`` (overlap), ``kept > 1`` (elected) and ``count < kept`` (discarded)."""
    _one_size(acc, count, touch, kept, total)

    def run(s: int, c: int) -> tuple[int, int, int]:
        out = (ctypes.c_int64 * 3)()
        lib.medusa_ties_final(
            _p(acc, s), _p(count, s), _p(touch, s), _p(kept, s), _p(total, s), c, scale, out
        )
        return int(out[0]), int(out[1]), int(out[2])

    pieces = _split(acc.numel(), run)
    return tuple(sum(p[i] for p in pieces) for i in range(3))  # type: ignore[return-value]
