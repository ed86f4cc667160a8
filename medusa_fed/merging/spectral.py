"""The spectral merges, TSV-M, Iso-C and Iso-CTS, on one tensor's branch deltas (FusionBench's
semantics).

All work on the singular value decomposition of 2-D weight matrices; every other tensor (biases,
LayerNorm weights, and embedding matrices, whose rows are tokens rather than features, as
FusionBench skips ``embed_tokens`` / ``lm_head``) gets the plain mean of the deltas. The result is
multiplied by ``scale`` (FusionBench's ``alpha``), chosen on validation like every other method.

- ``tsv_m`` (Gargiulo et al., CVPR 2025, "Task Singular Vectors"): with T branches and a matrix of
  rank r, keep each branch's top ``k = max(1, r // T)`` singular triplets ``(U_i, S_i, V_i)``;
  concatenate them (``U = [U_1 .. U_T]``, ``S = [S_1 .. S_T]``, ``V = [V_1; ..; V_T]``); replace
  ``U`` and ``V`` by their nearest orthogonal matrices (the polar factors: ``P Q^T`` from the SVD
  ``U = P Sigma Q^T``) so the branches' directions stop interfering; ``delta = U_o diag(S) V_o``.
- ``iso_c`` (Marczak et al., ICML 2025, "No Task Left Behind"): ``U S V = svd(sum_i delta_i)``,
  then flatten the spectrum: ``delta = mean(S) * U V`` (every direction of the summed update gets
  the same weight).
- ``iso_cts`` (the same paper, "Iso-CTS"; FusionBench's ``iso_cts`` and the authors' code): with T
  branches and rank ``r``, the common subspace gets ``c = int(r * common_fraction)`` directions,
  then ``c`` is lowered so the rest divides evenly: ``t = round((r - c) / T)`` directions per
  branch, ``c = r - T t``. ``U S V = svd(sum_i delta_i)`` gives the common directions ``U[:, :c]``,
  ``V[:c]``; each branch's residual off the common left subspace, ``delta_i - U_c U_c^T delta_i``,
  gives its top ``t`` singular vectors. All ``r`` left (and right) vectors are concatenated,
  replaced by their polar factor, and every direction gets the mean of the ``r`` kept singular
  values: ``delta = mean(S_kept) * U_o V_o``. When ``T t`` would exceed ``r`` (tiny matrices,
  ``common_fraction`` near 0), ``t`` is lowered by one.
- ``medusa_tsv`` (ours, a Medusa variant; :mod:`medusa_fed.merging.merge` dispatches it): a Medusa
  run's owned (masked) deltas with TSV-M on every weight matrix as above, and Algorithm 3's
  disjoint sum on every other tensor (their mean would divide each owner's update by T).

Inputs are ``(branch, fp32 delta)`` pairs sorted by branch name, as everywhere in ``merging``;
FusionBench takes the models in its pool's order, so a reordering changes which block a branch
takes in TSV-M's concatenation but not the result (the polar factor is permutation-equivariant).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from medusa_fed.merging.report import TensorReport

Branches = Sequence[tuple[str, torch.Tensor]]


def is_spectral(name: str, tensor: torch.Tensor) -> bool:
    """Whether a tensor is merged through its SVD: 2-D and not an embedding table."""
    return tensor.dim() == 2 and "embed" not in name


def _polar(m: torch.Tensor) -> torch.Tensor:
    """The orthogonal matrix nearest to ``m`` (Frobenius): ``P Q^T`` of ``m = P Sigma Q^T``."""
    p, _, qh = torch.linalg.svd(m, full_matrices=False)
    return p @ qh


def tsv_delta(name: str, deltas: Branches, like: torch.Tensor) -> torch.Tensor:
    """TSV-M's merged delta of one tensor (before ``scale``)."""
    if not is_spectral(name, like):
        return torch.stack([d for _, d in deltas]).mean(0)
    rank = min(like.shape)
    k = max(1, rank // len(deltas))
    us, ss, vs = [], [], []
    for _, d in deltas:
        u, s, vh = torch.linalg.svd(d, full_matrices=False)
        us.append(u[:, :k])  # [m, k]
        ss.append(s[:k])  # [k]
        vs.append(vh[:k, :])  # [k, n]
    u_cat, s_cat, v_cat = torch.cat(us, 1), torch.cat(ss), torch.cat(vs, 0)  # [m, Tk] [Tk] [Tk, n]
    return _polar(u_cat) @ torch.diag(s_cat) @ _polar(v_cat)


def iso_delta(name: str, deltas: Branches, like: torch.Tensor) -> torch.Tensor:
    """Iso-C's merged delta of one tensor (before ``scale``)."""
    if not is_spectral(name, like):
        return torch.stack([d for _, d in deltas]).mean(0)
    total = torch.stack([d for _, d in deltas]).sum(0)
    u, s, vh = torch.linalg.svd(total, full_matrices=False)
    return s.mean() * (u @ vh)


def iso_cts_delta(
    name: str, deltas: Branches, like: torch.Tensor, common_fraction: float
) -> torch.Tensor:
    """Iso-CTS's merged delta of one tensor (before ``scale``)."""
    if not is_spectral(name, like):
        return torch.stack([d for _, d in deltas]).mean(0)
    rank, teams = min(like.shape), len(deltas)
    common = int(rank * common_fraction)
    per_team = round((rank - common) / teams)
    if per_team * teams > rank:
        per_team -= 1
    common = rank - per_team * teams
    u, s, vh = torch.linalg.svd(torch.stack([d for _, d in deltas]).sum(0), full_matrices=False)
    u_c = u[:, :common]  # [m, c]
    us, ss, vs = [u_c], [s[:common]], [vh[:common, :]]
    for _, d in deltas:
        residual = d - u_c @ (u_c.T @ d)  # [m, n]: the branch outside the common subspace
        u_t, s_t, vh_t = torch.linalg.svd(residual, full_matrices=False)
        us.append(u_t[:, :per_team])  # [m, t]
        ss.append(s_t[:per_team])  # [t]
        vs.append(vh_t[:per_team, :])  # [t, n]
    u_cat, s_cat, v_cat = torch.cat(us, 1), torch.cat(ss), torch.cat(vs, 0)  # [m, r] [r] [r, n]
    return s_cat.mean() * (_polar(u_cat) @ _polar(v_cat))


def spectral_delta(
    name: str,
    deltas: Branches,
    like: torch.Tensor,
    method: str,
    scale: float,
    common_fraction: float = 0.8,
) -> tuple[torch.Tensor, TensorReport]:
    """``tsv_m``, ``iso_c`` or ``iso_cts`` on one tensor, with its report (no sparsifying, no
    election)."""
    touch = torch.zeros(like.shape, dtype=torch.int16, device=like.device)
    touched: dict[str, int] = {}
    for branch, d in deltas:
        nz = d != 0
        touched[branch] = int(torch.count_nonzero(nz))
        touch.add_(nz)
    overlap = int(torch.count_nonzero(touch > 1))
    if method == "iso_cts":
        acc = iso_cts_delta(name, deltas, like, common_fraction).to(torch.float32)
    else:
        combine = tsv_delta if method == "tsv_m" else iso_delta
        acc = combine(name, deltas, like).to(torch.float32)
    if scale != 1.0:
        acc.mul_(scale)
    return acc, TensorReport(like.numel(), touched, dict(touched), overlap, 0, 0)
