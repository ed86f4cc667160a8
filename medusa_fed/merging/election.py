"""Steps 2 and 3 of a merge: elect a sign per element, then average the deltas that agree with it.

Pure tensor-in/tensor-out functions (PEFT ``merge_utils`` style). They take the branch deltas as an
*iterable* so a caller can stream them (a generator that sparsifies one branch at a time keeps
memory at one temporary tensor instead of a stacked ``[branches, *shape]`` copy).

Two sign rules, because the two algorithms differ where the sum is exactly zero:

- ``"ties"``: PEFT's ``calculate_majority_sign_mask(method="total")``: the elected sign is + where
  the sum of the deltas is >= 0, else -. A zero sum elects +.
- ``"medusa"``: Algorithm 3's ``rho = sgn(sum_i delta_i)``, which may be 0. Only nonzero deltas can
  agree with a nonzero sign, so a zero sum averages nothing and the element keeps the base value
  (Algorithm 3 would average the branches that left p unchanged, which is the same thing, or an
  empty list, which it leaves undefined).

Either way zero deltas never count as agreeing (sign(0) = 0), so the mean is over the branches that
actually moved the element in the elected direction ("disjoint mean").
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch

SignRule = Literal["ties", "medusa"]


def signed_total(deltas: Iterable[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """Sum of the deltas in iteration order, in fp32 (a new tensor shaped like ``like``)."""
    total = torch.zeros(like.shape, dtype=torch.float32, device=like.device)
    for d in deltas:
        total.add_(d)
    return total


def elect_sign(total: torch.Tensor, rule: SignRule) -> torch.Tensor:
    """The elected sign per element as int8 in {-1, 0, +1} (0 only under ``rule="medusa"``)."""
    if rule == "ties":
        # ties: + where the sum is >= 0 (PEFT "total"), so a zero sum elects +; as 2 * b - 1 on
        # int8 (a where over python ints builds an int64 tensor first, ~5x slower)
        return (total >= 0).to(torch.int8).mul_(2).sub_(1)
    # medusa: sgn of the sum, 0 where it is exactly 0
    return torch.sign(total).to(torch.int8)


def agrees(delta: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """True where ``delta`` is nonzero and has the elected ``sign`` (bool, same shape)."""
    # bool temporaries instead of a float sign(delta) copy (a bool where is ~2x slower than
    # and/or); a 0 sign agrees with nothing
    ok = sign > 0
    ok &= delta > 0
    neg = sign < 0
    neg &= delta < 0
    ok |= neg
    return ok


def disjoint_mean(
    deltas: Iterable[torch.Tensor], sign: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of the deltas that agree with ``sign``, per element; 0 where none agrees.

    Returns ``(mean, count)``: ``mean`` fp32, ``count`` int16 (how many deltas were averaged;
    int16 keeps memory at half a tensor and holds up to 32,767 branches).
    Summation follows iteration order; the division matches PEFT's ``disjoint_merge``
    (``sum / clamp(count, min=1)``).
    """
    total = torch.zeros(sign.shape, dtype=torch.float32, device=sign.device)
    count = torch.zeros(sign.shape, dtype=torch.int16, device=sign.device)
    for d in deltas:
        ok = agrees(d, sign)  # bool
        total.add_(torch.where(ok, d, 0.0))
        count.add_(ok)
    total.div_(count.clamp(min=1))
    return total, count
