"""Parameter deltas: the currency every Medusa stage trades in.

A *state* is a flat ``dict[str, Tensor]`` of the shared parameters (the ownership space). A branch's
*delta* is ``tuned - base`` per tensor. The probe stage keeps only the top-d fraction of a delta by
magnitude, as a :class:`SparseDelta` (flat indices + values).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from medusa_fed.errors import PayloadError

StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class SparseDelta:
    """The kept entries of one tensor's delta.

    shape : tuple[int, ...]
        Shape of the dense tensor.
    indices : torch.Tensor
        int64, flat (row-major) positions, strictly increasing.
    values : torch.Tensor
        float32 deltas at ``indices``; same length.
    """

    shape: tuple[int, ...]
    indices: torch.Tensor
    values: torch.Tensor

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def validate(self, name: str = "tensor") -> None:
        """Raise PayloadError unless indices/values are consistent with ``shape``."""
        if self.indices.dtype != torch.int64 or self.indices.dim() != 1:
            raise PayloadError(
                f"{name}: expected 1-D int64 indices, found {self.indices.dtype} "
                f"with shape {tuple(self.indices.shape)}"
            )
        if self.values.dim() != 1 or self.values.numel() != self.indices.numel():
            raise PayloadError(
                f"{name}: expected {self.indices.numel()} values (one per index), "
                f"found shape {tuple(self.values.shape)}"
            )
        if self.indices.numel():
            if int(self.indices[0]) < 0 or int(self.indices[-1]) >= self.numel:
                raise PayloadError(
                    f"{name}: indices must lie in [0, {self.numel}), found "
                    f"[{int(self.indices[0])}, {int(self.indices[-1])}]"
                )
            if self.indices.numel() > 1 and not bool((self.indices[1:] > self.indices[:-1]).all()):
                raise PayloadError(f"{name}: indices must be strictly increasing")
        # a NaN or Inf makes the sum non-finite; a finite sum clears all values in one read (a
        # sum can overflow only on values that large, which the exact check then clears)
        finite_sum = bool(torch.isfinite(self.values.sum(dtype=torch.float32)))
        if not finite_sum and not bool(torch.isfinite(self.values).all()):
            raise PayloadError(f"{name}: values contain NaN or Inf")

    def to_dense(self) -> torch.Tensor:
        out = torch.zeros(self.numel, dtype=torch.float32)
        out[self.indices] = self.values.to(torch.float32)
        return out.view(self.shape)


def top_d(delta: torch.Tensor, density: float, key: torch.Tensor | None = None) -> SparseDelta:
    """Keep the ``density`` fraction of ``delta``'s entries with the largest magnitude (of
    ``key``'s entries when given: a score of the same shape, e.g. sqrt(Fisher) x |delta|).

    Trimming is per tensor (each tensor keeps ``ceil(density * numel)`` entries, ties broken by
    position), so a tensor's selection never depends on the others and can be streamed.
    Exact zeros of ``delta`` are never kept.
    """
    if not 0.0 < density <= 1.0:
        raise PayloadError(f"density must be in (0, 1], found {density}")
    flat = delta.detach().reshape(-1).to(torch.float32)
    k = min(flat.numel(), math.ceil(density * flat.numel()))
    if k == flat.numel():
        idx = torch.arange(flat.numel(), dtype=torch.int64)
    else:
        rank = flat if key is None else key.detach().reshape(-1).to(torch.float32)
        if rank.numel() != flat.numel():
            raise PayloadError(f"top_d: key of {rank.numel()} entries for {flat.numel()}")
        idx = torch.topk(rank.abs(), k, sorted=False).indices
        idx, _ = torch.sort(idx)
    vals = flat[idx]
    nz = vals != 0
    return SparseDelta(tuple(delta.shape), idx[nz].contiguous(), vals[nz].contiguous())


def state_delta(tuned: Mapping[str, torch.Tensor], base: Mapping[str, torch.Tensor]) -> StateDict:
    """``tuned - base`` per tensor, in float32; names and shapes must match."""
    if set(tuned) != set(base):
        missing = sorted(set(base) - set(tuned))[:3]
        extra = sorted(set(tuned) - set(base))[:3]
        raise PayloadError(f"tensor names differ from the base: missing {missing}, extra {extra}")
    out: StateDict = {}
    for name, b in base.items():
        t = tuned[name]
        if tuple(t.shape) != tuple(b.shape):
            raise PayloadError(
                f"{name}: expected shape {tuple(b.shape)} (the base), found {tuple(t.shape)}"
            )
        out[name] = t.detach().to(torch.float32) - b.detach().to(torch.float32)
    return out
