"""TSV-M and Iso-C on small matrices: hand-worked results, and an independent numpy reference of
FusionBench's steps on random matrices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medusa_fed.errors import ConfigError
from medusa_fed.merging import MergeChoice, MergeSpec, merge_states
from medusa_fed.merging.spectral import iso_delta, tsv_delta


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
    for method in ("tsv_m", "iso_c"):
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
