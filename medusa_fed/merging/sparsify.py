"""Step 1 of a merge: sparsify each branch's delta (TIES magnitude trim or DARE random drop).

Each step returns a *keep mask* (bool, the delta's shape) rather than a pruned copy, so a merge can
hold one byte per element per branch instead of a second fp32 copy of every delta, and apply the
mask on the fly (:func:`apply_keep`).

Semantics (public implementations differ; these are ours):

- **Magnitude trim (TIES)** is *per tensor*, like ``peft.utils.merge_utils.magnitude_based_pruning``
  and unlike the TIES paper's code, which trims the whole flattened task vector at once. It keeps
  exactly ``k = ceil(density * numel)`` entries (float dust such as ``0.2 * 35 = 7.000000000000001``
  is rounded away first), chosen by ``torch.topk`` on ``|delta|``. PEFT uses ``floor`` instead; the
  two agree whenever ``density * numel`` is an integer, and ours never trims a small tensor (a bias,
  a LayerNorm weight) to nothing. Exact zeros may be among the k kept; they change nothing.
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

import torch


def trim_count(numel: int, density: float) -> int:
    """Entries kept by the magnitude trim: ``ceil(density * numel)``, capped at ``numel``."""
    return min(numel, math.ceil(round(density * numel, 6)))


def magnitude_keep_mask(delta: torch.Tensor, density: float) -> torch.Tensor:
    """True at the ``trim_count(numel, density)`` entries of largest ``|delta|`` (per tensor)."""
    numel = delta.numel()
    k = trim_count(numel, density)
    if k >= numel:
        return torch.ones(delta.shape, dtype=torch.bool, device=delta.device)
    keep = torch.zeros(numel, dtype=torch.bool, device=delta.device)
    top = torch.topk(delta.detach().reshape(-1).abs(), k, sorted=False).indices  # [k] int64
    keep[top] = True
    return keep.view(delta.shape)


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
    """``delta * keep``, then ``/ rescale`` if given (DARE: ``rescale = 1 - drop_rate``).

    Same operation order as PEFT (``tensor * mask`` then ``/ density``), so results match it
    bit for bit. Returns a new tensor; ``delta`` is not modified.
    """
    out = delta * keep
    if rescale is not None and rescale != 1.0:
        out.div_(rescale)
    return out
