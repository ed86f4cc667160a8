"""Saving: safetensors round trips and from_pretrained-loadable model / adapter directories."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medusa_fed.deltas import top_d
from medusa_fed.training.config import ModelSpec
from medusa_fed.training.export import (
    load_sparse,
    load_state,
    save_model_dir,
    save_sparse,
    save_state,
)
from medusa_fed.training.models import load_base
from medusa_fed.training.tiny_models import write_tiny_model


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "bert", "bert")


@pytest.mark.parametrize("method", ["full", "lora", "ia3"])
def test_saved_model_loads_with_from_pretrained(
    bert_dir: Path, tmp_path: Path, method: str
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    # Prepare
    base = load_base(ModelSpec(source=str(bert_dir), method=method))  # type: ignore[arg-type]
    shared = {n: t + 0.01 for n, t in base.shared_state().items()}
    team = base.build(2, shared=shared, head_seed=5)
    x = base.tokenizer(["good movie", "awful plot"], return_tensors="pt", padding=True)  # type: ignore[operator]
    # Execute
    out = save_model_dir(base, tmp_path / "m", shared, team.head_state(), labels=("pos", "neg"))
    if method == "full":
        loaded = AutoModelForSequenceClassification.from_pretrained(str(out))
        assert loaded.config.id2label == {0: "pos", 1: "neg"}
    else:
        plain = AutoModelForSequenceClassification.from_pretrained(str(bert_dir), num_labels=2)
        loaded = PeftModel.from_pretrained(plain, str(out))
    # Assert
    loaded.eval()
    team.module.eval()
    with torch.no_grad():
        assert torch.allclose(loaded(**x).logits, team.module(**x).logits, atol=1e-6)


def test_states_and_sparse_deltas_round_trip(tmp_path: Path) -> None:
    # Prepare
    state = {"a.weight": torch.randn(4, 3), "b": torch.arange(5.0)}
    sparse = {n: top_d(t, 0.5) for n, t in state.items()}
    # Execute
    save_state(tmp_path / "s.safetensors", state, {"fingerprint": "abc"})
    save_sparse(tmp_path / "p.safetensors", sparse)
    back, meta = load_state(tmp_path / "s.safetensors")
    back_sparse = load_sparse(tmp_path / "p.safetensors")
    # Assert
    assert meta == {"fingerprint": "abc"}
    assert all(torch.equal(back[n], state[n]) for n in state)
    for name, s in sparse.items():
        assert back_sparse[name].shape == s.shape
        assert torch.equal(back_sparse[name].to_dense(), s.to_dense())
