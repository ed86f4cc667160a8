"""The per-chunk kernels of ownership assignment: owners from one chunk of candidate weights.

Plain tensor-in / tensor-out functions over a ``(k, n)`` float32 weight matrix (row i = team i,
see :mod:`medusa_fed.ownership.candidates`) and ``n`` uniforms; the policies' semantics are stated
in :mod:`medusa_fed.ownership.assign`. Written for memory speed: buffers allocated once per
assignment, whole-row passes only, and only ops torch vectorises.
"""

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING

import torch

from medusa_fed.ownership.candidates import CHUNK
from medusa_fed.ownership.ownership_map import NO_OWNER

if TYPE_CHECKING:
    from medusa_fed.ownership.candidates import Candidates

_M32 = 0xFFFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """Wellons' lowbias32 on int64 tensors holding uint32 values (the products wrap in int64;
    their low 32 bits are exact)."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _M32
    return x ^ (x >> 16)


def counter_uniforms(key: int, start: int, n: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """Float32 uniforms in [0, 1) of elements ``start .. start + n`` of stream ``key`` (64-bit):
    two rounds of a 32-bit integer hash over (offset, key), top 24 bits. An element's uniform
    depends on (key, its offset) only, not on how the tensor is chunked; bit for bit
    ``medusa_uniforms`` of :mod:`medusa_fed.native` (this is its torch twin)."""
    idx = torch.arange(start, start + n, dtype=torch.int64)
    h = _mix32((idx & _M32) ^ (key & _M32))
    h = _mix32(h ^ (idx >> 32) ^ (key >> 32))
    u = (h >> 8).to(torch.float32).mul_(2.0**-24)
    return u if out is None else out.copy_(u)


def native_owners(
    lib: ctypes.CDLL,
    cands: Candidates,
    name: str,
    start: int,
    end: int,
    key: int,
    policy: str,
    unselected: str,
    out: torch.Tensor,
    u: torch.Tensor | None = None,
) -> None:
    """Owners of elements ``[start, end)`` of tensor ``name`` into ``out`` (uint8, contiguous) by
    the fused C kernel: candidate weights, direction rule and policy in one pass over the probe
    entries, uniforms from :func:`counter_uniforms`' stream (or ``u``, fp32 contiguous, one per
    element: hand-picked draws); bit for bit what :meth:`Candidates.weights` +
    :meth:`ChunkKernel.owners` give."""
    teams = cands.teams + cands.uncontrolled
    pos = cands.spans(name, [start, end])
    keep: list[torch.Tensor] = []  # what the pointers point into lives until the call returns
    idx, val, cnt = [0] * len(teams), [0] * len(teams), [0] * len(teams)  # none: NULL, 0
    for t, team in enumerate(teams):
        d = cands.probes[team].get(name)
        lo, hi = pos[team]
        if d is not None and hi > lo:
            ind = d.indices[lo:hi].contiguous()
            v = d.values[lo:hi].to(torch.float32).contiguous()  # no copy when already so
            keep += [ind, v]
            idx[t], val[t], cnt[t] = ind.data_ptr(), v.data_ptr(), hi - lo
    k = len(cands.teams)
    ptrs = ctypes.c_void_p * max(len(teams), 1)
    counts = ctypes.c_int64 * max(len(teams), 1)
    ip, vp, cp = ptrs(*idx), ptrs(*val), counts(*cnt)
    size = ctypes.sizeof(ctypes.c_void_p)
    rc = lib.medusa_assign(
        k, len(teams) - k,
        ip, vp, cp,
        ctypes.addressof(ip) + k * size, ctypes.addressof(vp) + k * size,
        ctypes.addressof(cp) + k * ctypes.sizeof(ctypes.c_int64),
        start, end - start, key, 1 if policy == "argmax" else 0,
        0 if unselected == "random" else 1, out.data_ptr(), 0 if u is None else u.data_ptr(),
    )  # fmt: skip
    if rc != 0:
        raise MemoryError(f"native assignment of {name}: no memory for its block buffers")


class ChunkKernel:
    """The per-chunk owner kernels of proportional and argmax, on buffers reused across chunks.

    Every temporary of a chunk lives in a buffer allocated once (``width`` wide): a fresh
    multi-megabyte tensor per step costs its page faults every chunk, which measured slower than
    the arithmetic itself. Each kernel is a fixed number of passes over the ``(k, n)`` weights,
    row by row (torch reduces across a strided dim 0 ~10x slower than it adds two rows), using
    only ops torch vectorises: team ids and comparison results are float32 (a comparison into a
    bool, a uint8 ``masked_fill_`` / ``where`` and a float64 += float32 each measured 6-40x
    slower than a same-dtype add), and the float64 sum adds a float64 copy of each row.
    """

    def __init__(self, k: int, width: int = CHUNK) -> None:
        self.k = k
        self.weights = torch.empty(k, width, dtype=torch.float32)  # Candidates.weights(out=)
        self.u = torch.empty(width, dtype=torch.float32)
        self._f = torch.empty(7, width, dtype=torch.float32)
        self._cum = torch.empty(max(k - 1, 1), width, dtype=torch.float32)
        self._acc = torch.empty(2, width, dtype=torch.float64)
        self._zeros = torch.zeros(width, dtype=torch.float32)
        self._bool = torch.empty(2, width, dtype=torch.bool)
        self._owner = torch.empty(3, width, dtype=torch.uint8)

    def owners(
        self,
        w: torch.Tensor,
        u: torch.Tensor,
        policy: str,
        unselected: str,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Owner ids (uint8) of one chunk: weights ``w`` (k, n), uniforms ``u`` (n,), into
        ``out`` (n,) when given. ``policy``: "argmax", else proportional; ``unselected``:
        "random", else frozen (NO_OWNER).

        Team ids are carried as float32 (exact: at most 255) and every comparison writes a
        float32 0 / 1: torch vectorises a comparison only when its output has the inputs' dtype
        (a bool output runs element by element, measured 6x slower than a ``maximum``).
        """
        k, n = w.shape
        owner, has, flag, tmp = (self._f[j, :n] for j in range(4))
        if policy == "argmax":
            best = self._f[4, :n]
            best.copy_(w[0])
            owner.zero_()
            for i in range(1, k):
                torch.gt(w[i], best, out=flag)  # strict: ties keep the lowest sorted team name
                torch.sub(i, owner, out=tmp)  # owner += flag * (i - owner): i where flag
                tmp.mul_(flag)
                owner.add_(tmp)
                torch.maximum(best, w[i], out=best)
            torch.gt(best, 0, out=has)
        else:  # proportional: invert the cumulative weights at u * total
            # the running sum in float64, each prefix rounded to float32: bit for bit what
            # ``w.cumsum(0)`` gives on CPU (it accumulates float32 in double)
            acc, row, cum = self._acc[0, :n], self._acc[1, :n], self._cum[:, :n]
            acc.copy_(w[0])
            if k > 1:
                cum[0].copy_(w[0])
            for i in range(1, k):
                row.copy_(w[i])
                acc.add_(row)
                if i < k - 1:
                    cum[i].copy_(acc)
            total, x = self._f[4, :n], self._f[5, :n]
            total.copy_(acc)
            torch.gt(total, 0, out=has)
            torch.mul(u, total, out=x)
            below = torch.nextafter(total, self._zeros[:n], out=self._f[6, :n])
            torch.minimum(x, below, out=x)
            owner.zero_()
            for i in range(k - 1):  # zero-weight teams never own: their cum step is empty
                torch.le(cum[i], x, out=flag)
                owner.add_(flag)
        # elements without a candidate: uniform team (``u`` in [0, 1)) or NO_OWNER
        if unselected == "random":
            torch.mul(u, k, out=flag)
            flag.clamp_(max=k - 1)
            flag.trunc_()  # like float -> uint8
        else:
            flag.fill_(NO_OWNER)
        torch.sub(owner, flag, out=tmp)  # has ? owner : fill
        tmp.mul_(has)
        tmp.add_(flag)
        result = torch.empty(n, dtype=torch.uint8) if out is None else out
        return result.copy_(tmp)


def select_u8(
    cond: torch.Tensor, a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, tmp: torch.Tensor
) -> torch.Tensor:
    """``torch.where(cond, a, b)`` for uint8 ``a`` / ``b`` as ``b + cond * (a - b)`` (mod 256,
    so exact), into ``out``; ``tmp`` is scratch (``out`` may be ``a`` or ``b``, not ``tmp``)."""
    torch.sub(a, b, out=tmp)
    tmp.mul_(cond.view(torch.uint8))
    return torch.add(b, tmp, out=out)


def priced_argmax(
    w: torch.Tensor, lam: torch.Tensor, kernel: ChunkKernel | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best ``w_i - lambda_i`` over candidates (``w_i > 0``; -inf if none) and its team (uint8).

    Ties keep the lowest sorted team name. Returns views of ``kernel``'s buffers (valid until its
    next call) when one is given.
    """
    k, n = w.shape
    ws = kernel or ChunkKernel(k, n)
    best, score, owner, team = ws._f[0, :n], ws._f[1, :n], ws._owner[0, :n], ws._owner[1, :n]
    pos, better, ninf = ws._bool[0, :n], ws._bool[1, :n], ws._f[2, :n]
    best.fill_(-torch.inf)
    ninf.fill_(-torch.inf)
    owner.zero_()
    for i in range(k):
        torch.gt(w[i], 0, out=pos)
        torch.sub(w[i], lam[i], out=score)
        torch.where(pos, score, ninf, out=score)
        torch.gt(score, best, out=better)  # strict: ties keep the lowest sorted name
        team.fill_(i)
        select_u8(better, team, owner, owner, ws._owner[2, :n])
        torch.maximum(best, score, out=best)
    return best, owner


def owners_for_chunk(
    w: torch.Tensor, u: torch.Tensor, policy: str, unselected: str
) -> torch.Tensor:
    """Owner ids (uint8) for one chunk of candidate weights ``w`` (k, n), uniforms ``u`` (n,)."""
    return ChunkKernel(w.shape[0], w.shape[1]).owners(w, u, policy, unselected)
