"""TSV-M, Iso-C and Iso-CTS on small matrices: hand-worked results, and an independent numpy
reference of FusionBench's steps on random matrices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medusa_fed.errors import ConfigError
from medusa_fed.merging import MergeChoice, MergeSpec, merge_states
from medusa_fed.merging.spectral import iso_cts_delta, iso_delta, tsv_delta
from medusa_fed.run_config import RunConfig


def _pairs(*deltas: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    return [(f"t{i}", d) for i, d in enumerate(deltas)]


def test_iso_c_flattens_the_spectrum_of_the_sum_hand_worked():
    # Prepare: two rank-1 updates on orthogonal directions, singular values 3 and 1
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    d1, d2 = 3 * torch.outer(e1, e1), torch.outer(e2, e2)
    # Execute
    merged = iso_delta("w", _pairs(d1, d2), d1)
    # Assert: both directions at the mean singular value, 2
    assert torch.allclose(merged, torch.tensor([[2.0, 0.0], [0.0, 2.0]]), atol=1e-6)


def test_tsv_m_keeps_each_branch_top_directions_hand_worked():
    # Prepare: T = 2 branches of rank-2 2x2 matrices: each keeps k = 2 // 2 = 1 triplet
    d1 = torch.diag(torch.tensor([3.0, 1.0]))  # keeps 3 e1 e1^T, drops the 1
    d2 = torch.diag(torch.tensor([0.0, 2.0]))  # keeps 2 e2 e2^T
    # Execute
    merged = tsv_delta("w", _pairs(d1, d2), d1)
    # Assert: the kept directions are already orthogonal, so the merge is their sum
    assert torch.allclose(merged.abs(), torch.diag(torch.tensor([3.0, 2.0])), atol=1e-6)
    assert torch.allclose(merged, torch.diag(torch.tensor([3.0, 2.0])), atol=1e-6)


def test_iso_cts_keeps_common_and_task_directions_flat_hand_worked():
    # Prepare: rank 4, T = 2, common_fraction 0.5: c = 2 common directions, t = 1 per branch
    d1 = torch.diag(torch.tensor([5.0, 0.0, 2.0, 1.0]))
    d2 = torch.diag(torch.tensor([0.0, 4.0, 0.0, 0.5]))
    # Execute
    merged = iso_cts_delta("w", _pairs(d1, d2), d1, common_fraction=0.5)
    # Assert: sum = diag(5, 4, 2, 1.5): common e1, e2 (5, 4); branch 1's residual diag(0, 0, 2, 1)
    # keeps e3 (2), branch 2's diag(0, 0, 0, 0.5) keeps e4 (0.5); flat at (5 + 4 + 2 + 0.5) / 4
    assert torch.allclose(merged, 2.875 * torch.eye(4), atol=1e-6)
    # Iso-C flattens the sum's own spectrum instead: (5 + 4 + 2 + 1.5) / 4 = 3.125
    assert torch.allclose(iso_delta("w", _pairs(d1, d2), d1), 3.125 * torch.eye(4), atol=1e-6)


def test_iso_cts_with_the_whole_rank_common_is_iso_c():
    rng = np.random.default_rng(7)
    pairs = _pairs(*(torch.from_numpy(rng.normal(size=(5, 8))).float() for _ in range(3)))
    merged = iso_cts_delta("w", pairs, pairs[0][1], common_fraction=1.0)
    assert torch.allclose(merged, iso_delta("w", pairs, pairs[0][1]), atol=1e-5)


def _reference_iso_cts(deltas: list[np.ndarray], fraction: float) -> np.ndarray:
    """FusionBench's iso_cts on one matrix, restated in numpy (its block order: each task's
    directions first, the common ones last)."""
    r, teams = min(deltas[0].shape), len(deltas)
    common = int(r * fraction)
    common = r - round((r - common) / teams) * teams
    per = (r - common) // teams
    u, s, vh = np.linalg.svd(sum(deltas), full_matrices=False)
    uc = u[:, :common]
    us, ss, vs = [], [], []
    for d in deltas:
        ut, st, vt = np.linalg.svd(d - uc @ uc.T @ d, full_matrices=False)
        us.append(ut[:, :per])
        ss.append(st[:per])
        vs.append(vt[:per])
    u_all = np.concatenate([*us, uc], 1)
    s_all = np.concatenate([*ss, s[:common]])
    v_all = np.concatenate([*vs, vh[:common]], 0)
    uu, _, uv = np.linalg.svd(u_all, full_matrices=False)
    vu, _, vv = np.linalg.svd(v_all, full_matrices=False)
    return (uu @ uv) @ np.diag(np.full(r, s_all.mean())) @ (vu @ vv)


@pytest.mark.parametrize(("teams", "fraction", "shape"), [(2, 0.8, (6, 9)), (3, 0.5, (9, 7))])
def test_iso_cts_matches_an_independent_reference(teams, fraction, shape):
    rng = np.random.default_rng(teams)
    deltas = [rng.normal(size=shape) for _ in range(teams)]
    pairs = _pairs(*(torch.from_numpy(d).float() for d in deltas))
    merged = iso_cts_delta("w", pairs, pairs[0][1], fraction)
    assert np.allclose(merged.numpy(), _reference_iso_cts(deltas, fraction), atol=1e-4)


def test_medusa_tsv_sums_owned_vectors_and_merges_owned_matrices_as_tsv_m():
    # Prepare: two teams own disjoint elements of a bias and of a weight matrix
    base = {"bias": torch.zeros(4), "w": torch.zeros(2, 2)}
    diag = torch.diag
    deltas = {
        "a": {"bias": torch.tensor([1.0, 0.0, 2.0, 0.0]), "w": diag(torch.tensor([3.0, 0.0]))},
        "b": {"bias": torch.tensor([0.0, 5.0, 0.0, 1.0]), "w": diag(torch.tensor([0.0, 2.0]))},
    }
    # Execute
    merged = merge_states(base, deltas, MergeSpec("medusa_tsv", scale=2.0))
    # Assert: the bias is Algorithm 3's disjoint sum (tsv_m would take the mean), times 2
    assert torch.equal(merged["bias"], torch.tensor([2.0, 10.0, 4.0, 2.0]))
    # the matrix is TSV-M of the owned deltas (here already orthogonal: their sum), times 2
    assert torch.allclose(merged["w"], torch.diag(torch.tensor([6.0, 4.0])), atol=1e-6)
    expected = 2 * tsv_delta("w", _pairs(deltas["a"]["w"], deltas["b"]["w"]), base["w"])
    assert torch.allclose(merged["w"], expected, atol=1e-6)


def test_medusa_tsv_runs_with_ownership_and_refuses_to_be_a_federated_anchor():
    cfg = RunConfig.from_mapping({"merge": "medusa_tsv:scale=1|1.5", "compare": "tsv_m"})
    assert cfg.uses_ownership and cfg.train_rounds == 2
    with pytest.raises(ConfigError, match="merge a Medusa run's owned branches"):
        RunConfig.from_mapping({"federated": "medusa_tsv"})


def _reference_tsv(deltas: list[np.ndarray]) -> np.ndarray:
    """FusionBench's compute_and_sum_svd_mem_reduction on one matrix, restated in numpy."""
    k = max(1, min(deltas[0].shape) // len(deltas))
    us, ss, vs = [], [], []
    for d in deltas:
        u, s, vh = np.linalg.svd(d, full_matrices=False)
        us.append(u[:, :k])
        ss.append(s[:k])
        vs.append(vh[:k])
    u, s, v = np.concatenate(us, 1), np.concatenate(ss), np.concatenate(vs, 0)
    uu, _, uv = np.linalg.svd(u, full_matrices=False)
    vu, _, vv = np.linalg.svd(v, full_matrices=False)
    return (uu @ uv) @ np.diag(s) @ (vu @ vv)


def _reference_iso(deltas: list[np.ndarray]) -> np.ndarray:
    u, s, vh = np.linalg.svd(sum(deltas), full_matrices=False)
    return s.mean() * (u @ vh)


@pytest.mark.parametrize("teams", [2, 3, 5])
def test_spectral_merges_match_an_independent_reference(teams):
    rng = np.random.default_rng(teams)
    deltas = [rng.normal(size=(6, 9)).astype(np.float64) for _ in range(teams)]
    pairs = _pairs(*(torch.from_numpy(d).float() for d in deltas))
    like = pairs[0][1]
    assert np.allclose(tsv_delta("w", pairs, like).numpy(), _reference_tsv(deltas), atol=1e-4)
    assert np.allclose(iso_delta("w", pairs, like).numpy(), _reference_iso(deltas), atol=1e-4)


def test_vectors_and_embeddings_get_the_mean_and_scale_applies_to_all():
    # Prepare
    base = {"bias": torch.zeros(3), "embeddings.word_embeddings.weight": torch.zeros(4, 2)}
    deltas = {
        "a": {
            "bias": torch.tensor([1.0, 2.0, 3.0]),
            "embeddings.word_embeddings.weight": torch.ones(4, 2),
        },
        "b": {
            "bias": torch.tensor([3.0, 2.0, 1.0]),
            "embeddings.word_embeddings.weight": torch.zeros(4, 2),
        },
    }
    for method in ("tsv_m", "iso_c", "iso_cts"):
        # Execute
        merged = merge_states(base, deltas, MergeSpec(method, scale=2.0))  # type: ignore[arg-type]
        # Assert: 2 x the mean
        assert torch.allclose(merged["bias"], torch.tensor([4.0, 4.0, 4.0]))
        assert torch.allclose(merged["embeddings.word_embeddings.weight"], torch.ones(4, 2))


def test_spectral_methods_parse_with_a_scale_grid_and_refuse_other_settings():
    choice = MergeChoice.parse("tsv_m:scale=0.5|1")
    assert [choice.spec(c, seed=0).scale for c in choice.candidates()] == [0.5, 1.0]
    with pytest.raises(ConfigError):
        MergeChoice.parse("iso_c:scale=inf")
    cts = MergeChoice.parse("iso-cts:common_fraction=0.5|0.8:scale=1")
    assert [cts.spec(c, seed=0).common_fraction for c in cts.candidates()] == [0.5, 0.8]
    with pytest.raises(ConfigError, match="common_fraction must be in"):
        MergeChoice.parse("iso_cts:common_fraction=0")
