"""Step 1 of a merge: sparsify each branch's delta (TIES magnitude trim or DARE random drop).

Each step returns a *keep mask* (bool, the delta's shape) rather than a pruned copy, so a merge can
hold one byte per element per branch instead of a second fp32 copy of every delta, and apply the
mask on the fly (:func:`apply_keep`).

Semantics (public implementations differ; these are ours):

- **Magnitude trim (TIES)** is *per tensor*, like ``peft.utils.merge_utils.magnitude_based_pruning``
  and unlike the TIES paper's code, which trims the whole flattened task vector at once. It keeps
  exactly ``k = ceil(density * numel)`` entries (float dust such as ``0.2 * 35 = 7.000000000000001``
  is rounded away first), those of largest ``|delta|`` (an exact, streamed radix select). PEFT
  uses ``floor`` instead; the two agree whenever ``density * numel`` is an integer, and ours never
  trims a small tensor (a bias, a LayerNorm weight) to nothing. Magnitudes tied at the cut are
  kept lowest position first (topk picks among them arbitrarily). Exact zeros may be among the k
  kept; they change nothing.
- **DARE** (Yu et al. 2024) keeps each element independently with probability ``1 - drop_rate`` and
  divides the survivors by ``1 - drop_rate`` (PEFT's ``random_pruning(..., rescale=True)``, whose
  ``density`` is our ``1 - drop_rate``). The mask is ``torch.bernoulli`` on a CPU generator seeded
  by :func:`dare_seed` (seed, tensor name, branch name): the same drops for the same run whatever
  order branches or tensors are visited in, and on any device. With the same seed in the global
  generator, PEFT draws the identical mask.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch


def trim_count(numel: int, density: float) -> int:
    """Entries kept by the magnitude trim: ``ceil(density * numel)``, capped at ``numel``."""
    return min(numel, math.ceil(round(density * numel, 6)))


_CHUNK = 1 << 22  # elements per chunk of the streaming selection (16 MiB of fp32)


def _top_bucket(hist: torch.Tensor, k: int) -> tuple[int, int]:
    """Highest bucket b such that counts in buckets >= b reach ``k``; and the count above b."""
    from_top = torch.cumsum(hist.flip(0), 0)  # from_top[j] = count in buckets >= len - 1 - j
    j = int(torch.searchsorted(from_top, k))
    above = int(from_top[j - 1]) if j > 0 else 0
    return hist.numel() - 1 - j, above


@dataclass(frozen=True)
class MagnitudeCut:
    """Where one tensor's magnitude trim falls: keep every entry with ``|delta|`` above
    ``threshold`` and the first ``ties`` (by position) of the ``equal`` entries equal to it."""

    threshold: float
    ties: int
    equal: int

    @property
    def keeps_whole_tie(self) -> bool:
        """Whether ``|delta| >= threshold`` is the kept set (every tied entry fits, or the tie is
        at zero, where keeping a zero changes nothing)."""
        return self.ties == self.equal or self.threshold == 0.0


def magnitude_cut(
    delta: torch.Tensor, density: float, absolute: torch.Tensor | None = None
) -> MagnitudeCut | None:
    """The cut of the magnitude trim (``None``: every entry is kept).

    Exact selection by a two-pass radix select on the fp32 bit patterns of ``|delta|`` (ordered
    like the values), streamed in chunks: memory stays near one chunk, where ``torch.topk``
    would copy values and indices (about 5.6x the tensor). Pass 1 histograms the 16 high bits;
    pass 2 the 16 low bits of the chosen high bucket, every entry outside it clamped into two
    spare buckets (a boolean gather of the bucket's entries costs ~3x more). A sampled window
    (sort a strided sample, histogram only the patterns around its cut) was tried and dropped: on
    Gaussian and Cauchy deltas the sample's 4-sigma band spans 2-6x the 65,536 patterns one
    histogram holds, so it saved no pass.

    absolute : torch.Tensor | None (default: None)
        ``|delta|`` as fp32 of any shape with ``delta``'s elements, when the caller has it (saves
        the absolute value per chunk).
    """
    flat = delta.detach().reshape(-1).to(torch.float32) if absolute is None else absolute
    flat = flat.reshape(-1)
    numel = flat.numel()
    k = trim_count(numel, density)
    if k >= numel:
        return None

    def bits(start: int, stop: int) -> torch.Tensor:
        part = flat[start:stop]  # read only: with ``absolute`` it is the caller's tensor
        return (part.abs() if absolute is None else part).view(torch.int32)

    def window(lowest: int) -> torch.Tensor:
        """Counts of the patterns lowest .. lowest + 65535; [0]: below, [-1]: above them."""
        hist = torch.zeros((1 << 16) + 2, dtype=torch.int64, device=flat.device)
        for s in range(0, numel, _CHUNK):
            offsets = torch.sub(bits(s, s + _CHUNK), lowest - 1).clamp_(0, (1 << 16) + 1)
            hist += torch.bincount(offsets, minlength=(1 << 16) + 2)
        return hist

    # pass 1: histogram of the high 16 bits (sign bit is 0, so 32,768 buckets)
    hist = torch.zeros(1 << 15, dtype=torch.int64, device=flat.device)
    for s in range(0, numel, _CHUNK):
        hist += torch.bincount(bits(s, s + _CHUNK) >> 16, minlength=1 << 15)
    high, above_high = _top_bucket(hist, k)
    # pass 2: the low 16 bits inside that bucket
    return _cut_in(window(high << 16)[1:-1], high << 16, k - above_high)


def _cut_in(hist: torch.Tensor, lowest: int, wanted: int) -> MagnitudeCut:
    """The cut at the ``wanted``-th largest of the patterns counted in ``hist`` (pattern
    ``lowest + i`` in bucket i; the entries above them are already counted out)."""
    offset, above = _top_bucket(hist, wanted)
    pattern = lowest + offset  # bit pattern of the k-th largest magnitude
    threshold = float(torch.tensor([pattern], dtype=torch.int32).view(torch.float32))
    ties = wanted - above  # entries equal to it that still fit
    return MagnitudeCut(threshold, ties, int(hist[offset]))


def magnitude_keep_mask(delta: torch.Tensor, density: float) -> torch.Tensor:
    """True at the ``trim_count(numel, density)`` entries of largest ``|delta|`` (per tensor).

    See :func:`magnitude_cut`. Entries equal to the k-th largest magnitude are taken by position,
    lowest first. Same kept set as PEFT's ``topk`` whenever that magnitude is not tied.
    """
    cut = magnitude_cut(delta, density)
    if cut is None:
        return torch.ones(delta.shape, dtype=torch.bool, device=delta.device)
    return _keep_mask(delta, cut)


def _keep_mask(delta: torch.Tensor, cut: MagnitudeCut) -> torch.Tensor:
    """The bool keep mask of ``cut``: above the threshold, plus the first ``ties`` equal to it."""
    flat = delta.detach().reshape(-1).to(torch.float32)
    if cut.ties == cut.equal:
        return (flat.abs() >= cut.threshold).view(delta.shape)
    keep = flat.abs() > cut.threshold
    ties_needed = cut.ties
    for s in range(0, flat.numel(), _CHUNK):
        if ties_needed <= 0:
            break
        tied = torch.nonzero(flat[s : s + _CHUNK].abs() == cut.threshold).reshape(-1)
        tied = tied[:ties_needed]
        keep[s + tied] = True
        ties_needed -= tied.numel()
    return keep.view(delta.shape)


def magnitude_trim_(
    delta: torch.Tensor, density: float, scratch: torch.Tensor
) -> tuple[torch.Tensor, MagnitudeCut | None]:
    """:func:`magnitude_cut` then :func:`trim_` on fp32 ``delta`` in place, ``|delta|`` computed
    once into ``scratch``; returns ``(delta, cut)`` (the cut replays the trim later)."""
    torch.abs(delta, out=scratch)
    cut = magnitude_cut(delta, density, absolute=scratch)
    return trim_(delta, cut, scratch, scratch_holds_abs=True), cut


def trim_(
    delta: torch.Tensor,
    cut: MagnitudeCut | None,
    scratch: torch.Tensor,
    scratch_holds_abs: bool = False,
) -> torch.Tensor:
    """Zero, in place, the entries of fp32 ``delta`` the trim drops; returns ``delta``.

    ``scratch``: an fp32 tensor of ``delta``'s shape, overwritten (``scratch_holds_abs``: it holds
    ``|delta|`` already, so it is not computed again). Where ``|delta| >= threshold``
    is the kept set the drop is a multiply by a 0/1 fp32 mask (comparisons and masks in bool run
    3-5x slower on CPU); dropped entries become zeros, possibly ``-0.0`` (as PEFT's ``* mask``).
    """
    if cut is None:
        return delta
    if cut.keeps_whole_tie:
        if cut.threshold > 0.0:  # at a zero threshold everything nonzero is kept already
            if not scratch_holds_abs:
                torch.abs(delta, out=scratch)
            delta.mul_(torch.ge(scratch, cut.threshold, out=scratch))
        return delta
    return delta.mul_(_keep_mask(delta, cut))  # ties by position: rare, a bool mask


def dare_seed(seed: int, tensor: str, branch: str) -> int:
    """A 63-bit generator seed from the run seed, the tensor name and the branch name.

    Stable across processes and Python versions (blake2b, not ``hash``).
    """
    key = f"{int(seed)}\x00{tensor}\x00{branch}".encode()
    digest = hashlib.blake2b(key, digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def dare_keep_mask(
    shape: torch.Size | tuple[int, ...],
    drop_rate: float,
    seed: int,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Bernoulli keep mask: True with probability ``1 - drop_rate``; generator seeded ``seed``.

    Drawn as ``torch.bernoulli(torch.full(shape, 1 - drop_rate))`` on CPU (PEFT's exact draw), then
    moved to ``device``.
    """
    if drop_rate <= 0.0:
        return torch.ones(shape, dtype=torch.bool, device=device)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    probs = torch.full(tuple(shape), 1.0 - drop_rate, dtype=torch.float32)
    keep = torch.bernoulli(probs, generator=gen).bool()  # fp32 0/1 -> bool
    del probs
    return keep.to(device)


def apply_keep(
    delta: torch.Tensor, keep: torch.Tensor, rescale: float | None = None
) -> torch.Tensor:
    """``delta`` where ``keep``, else 0; then ``/ rescale`` if given (DARE: ``1 - drop_rate``).

    Equal to PEFT's ``tensor * mask`` then ``/ density`` (dropped entries may differ in the sign of
    zero only, which ``torch.equal`` and every merge step ignore), without PEFT's float copy of the
    mask. Returns a new tensor; ``delta`` is not modified.
    """
    out = torch.where(keep, delta, 0.0)
    if rescale is not None and rescale != 1.0:
        out.div_(rescale)
    return out
