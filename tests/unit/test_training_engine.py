"""Training engine on tiny random checkpoints: shared space, probe, masked fine-tune, evaluate."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from medusa_fed.errors import ConfigError, DataError, ModelError
from medusa_fed.masking import MaskError
from medusa_fed.training.branch import finetune, probe
from medusa_fed.training.config import ModelSpec, TrainConfig
from medusa_fed.training.data import Split, TaskData
from medusa_fed.training.evaluate import by_length, evaluate, evaluate_model
from medusa_fed.training.models import BaseModel, TeamModel, load_base
from medusa_fed.training.tiny_models import write_tiny_model

TEXTS = ("good great fun movie", "bad awful boring film", "love this story", "hate the plot") * 6
CLS = TaskData("toy", "classification", ("pos", "neg"), *(Split(TEXTS, (0, 1, 0, 1) * 6),) * 3)
LM = TaskData("toylm", "language-modeling", (), *(Split(TEXTS, ()),) * 3)
CFG = TrainConfig(max_steps=4, lr=1e-2, batch_size=8, weight_decay=0.1)
DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]  # whatever is present


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {arch: write_tiny_model(root / arch, arch) for arch in ("bert", "llama", "gpt2")}


def _base(tiny: dict[str, Path], arch: str, method: str) -> BaseModel:
    family = "encoder-classifier" if arch == "bert" else "causal-lm"
    return load_base(ModelSpec(source=str(tiny[arch]), family=family, method=method))  # type: ignore[arg-type]


def _random_mask(base: BaseModel, seed: int, density: float = 0.3) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.rand(s, generator=gen) < density for n, s in base.shapes.items()}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    ("arch", "method", "optimizer"),
    [
        ("bert", "full", "adamw"),
        ("bert", "lora", "adamw"),
        ("bert", "ia3", "sgd"),
        ("bert", "full", "sgd"),
        ("llama", "full", "adamw"),
        ("llama", "lora", "sgd"),
        ("gpt2", "ia3", "adamw"),
    ],
)
def test_masked_finetune_is_bit_exact_outside_the_mask(
    tiny: dict[str, Path], arch: str, method: str, optimizer: str, device: str
) -> None:
    # Prepare
    base = _base(tiny, arch, method)
    mask = _random_mask(base, seed=1)
    cfg = TrainConfig(
        max_steps=4,
        lr=1e-2,
        batch_size=8,
        weight_decay=0.1,
        optimizer=optimizer,  # type: ignore[arg-type]
        device=device,
    )
    # Execute
    result = finetune(base, CLS if arch == "bert" else LM, cfg, mask=mask)
    # Assert
    assert set(result.delta) == set(base.shared_names)
    for name, delta in result.delta.items():
        assert bool((delta[~mask[name]] == 0).all()), name
    moved = sum(int((d != 0).sum()) for d in result.delta.values())
    assert moved > 0.5 * sum(int(m.sum()) for m in mask.values()) * 0.1


def test_shared_space_naming_and_head(tiny: dict[str, Path]) -> None:
    # Prepare / Execute
    full, lora = _base(tiny, "bert", "full"), _base(tiny, "bert", "lora")
    gpt2 = _base(tiny, "gpt2", "full")
    team = full.build(3)
    # Assert: bare backbone names, pooler is in the checkpoint, head is the classifier
    assert "encoder.layer.0.attention.self.query.weight" in full.shared_names
    assert "pooler.dense.weight" in full.shared_names
    assert sorted(team.head) == ["classifier.bias", "classifier.weight"]
    assert all(".lora_A." in n or ".lora_B." in n for n in lora.shared_names)
    init = lora.shared_state()
    assert all(bool((t == 0).all()) for n, t in init.items() if "lora_B" in n)
    assert "lm_head.weight" not in gpt2.shared_names  # tied: counted once
    assert full.fingerprint() == _base(tiny, "bert", "full").fingerprint()
    assert len({full.fingerprint(), lora.fingerprint()}) == 2


def test_probe_returns_top_d_of_the_unmasked_delta(tiny: dict[str, Path]) -> None:
    # Prepare
    base = _base(tiny, "bert", "full")
    # Execute
    result = probe(base, CLS, CFG, density=0.1)
    dense = finetune(base, CLS, CFG).delta
    # Assert
    for name, sparse in result.sparse.items():
        sparse.validate(name)
        assert sparse.indices.numel() <= -(-dense[name].numel() // 10)
        assert torch.equal(sparse.values, dense[name].reshape(-1)[sparse.indices])
        if sparse.indices.numel():
            kept_min = sparse.values.abs().min()
            others = torch.ones(dense[name].numel(), dtype=torch.bool)
            others[sparse.indices] = False
            assert bool((dense[name].reshape(-1)[others].abs() <= kept_min).all())


def test_same_seed_same_delta_and_start_continuation(tiny: dict[str, Path]) -> None:
    # Prepare
    base = _base(tiny, "bert", "lora")
    first = finetune(base, CLS, CFG)
    start = {n: base.shared_state()[n] + first.delta[n] for n in base.shared_names}
    mask = _random_mask(base, seed=2)
    # Execute
    again = finetune(base, CLS, CFG)
    second = finetune(base, CLS, CFG, mask=mask, start=start, head=first.head)
    # Assert
    assert all(torch.equal(first.delta[n], again.delta[n]) for n in base.shared_names)
    team = base.build(2, shared={n: start[n] + second.delta[n] for n in start})
    for name, param in team.shared.items():
        keep = ~mask[name]
        assert torch.equal(param.detach()[keep], start[name][keep])
    assert not torch.equal(second.head["classifier.weight"], first.head["classifier.weight"])


def test_shared_lr_scale_scales_the_shared_step_and_leaves_the_head(tiny: dict[str, Path]) -> None:
    # Prepare: one plain SGD step (its update is lr * gradient), with and without the scale
    base = _base(tiny, "bert", "full")
    mask = _random_mask(base, seed=3)
    one = TrainConfig(max_steps=1, lr=1e-2, batch_size=8, weight_decay=0.0, optimizer="sgd")
    # Execute
    plain = finetune(base, CLS, one, mask=mask)
    scaled = finetune(base, CLS, replace(one, shared_lr_scale=3.0), mask=mask)
    # Assert: the shared step is 3x, the head's step the same, the mask still exact
    # (a delta is (base + step) - base in fp32: equal to 3x up to the weights' rounding)
    for name in base.shared_names:
        assert torch.allclose(scaled.delta[name], 3.0 * plain.delta[name], rtol=1e-3, atol=1e-6)
        assert bool((scaled.delta[name][~mask[name]] == 0).all()), name
    norm1, norm3 = (sum(float(d.norm()) for d in r.delta.values()) for r in (plain, scaled))
    assert norm1 > 0 and norm3 / norm1 == pytest.approx(3.0, rel=1e-3)
    for name, weight in plain.head.items():
        assert torch.equal(scaled.head[name], weight), name
    with pytest.raises(ConfigError, match="shared_lr_scale must be > 0"):
        TrainConfig(shared_lr_scale=0.0)


def test_head_only_trains_the_head_and_keeps_the_space(tiny: dict[str, Path]) -> None:
    # Prepare
    base = _base(tiny, "bert", "full")
    fresh = base.build(2, head_seed=0).head_state()
    # Execute
    result = finetune(base, CLS, CFG, head_only=True)
    # Assert
    assert all(bool((d == 0).all()) for d in result.delta.values())
    assert not torch.equal(result.head["classifier.weight"], fresh["classifier.weight"])


def test_evaluate_reports_metrics(tiny: dict[str, Path]) -> None:
    # Prepare
    cls_base, lm_base = _base(tiny, "bert", "full"), _base(tiny, "llama", "full")
    # Execute
    cls = evaluate(cls_base, None, None, CLS.test, num_labels=2)
    lm = evaluate(lm_base, None, None, LM.test)
    # Assert
    assert 0.0 <= cls["accuracy"] <= 1.0 and cls["examples"] == len(TEXTS)
    assert lm["perplexity"] == pytest.approx(torch.tensor(lm["loss"]).exp().item(), rel=1e-5)
    assert lm["perplexity"] > 1.0


class _TokenParity(torch.nn.Module):
    """Predicts the parity of each example's real-token count: an answer that padding cannot
    change, so a prediction filed under the wrong example shows."""

    def forward(self, input_ids, attention_mask, labels=None, **_):  # type: ignore[no-untyped-def]
        odd = attention_mask.sum(-1) % 2
        return SimpleNamespace(logits=torch.stack([1 - odd, odd], -1).float())


def test_evaluate_batches_by_length_and_keeps_each_prediction_with_its_example(
    tiny: dict[str, Path],
) -> None:
    # Prepare: texts of very different lengths, in an order that is not by length
    tokenizer = _base(tiny, "bert", "full").tokenizer
    words = [
        "good",
        "great",
        "fun",
        "bad",
        "awful",
        "boring",
        "love",
        "hate",
        "story",
        "plot",
        "film",
        "movie",
    ]
    texts = tuple(" ".join(words[(i * 5) % 12 :][: 1 + (i * 7) % 11]) for i in range(24))
    order = by_length(Split(texts, (0,) * 24))
    assert order != list(range(24)) and sorted(order) == list(range(24))
    parity = tuple(len(tokenizer(t)["input_ids"]) % 2 for t in texts)  # type: ignore[operator]
    assert len(set(parity)) == 2
    team = TeamModel(_TokenParity(), {}, {}, num_labels=2)
    # Execute: padded batches of 8 in length order
    right = evaluate_model(team, tokenizer, Split(texts, parity), batch_size=8)
    wrong = evaluate_model(team, tokenizer, Split(texts, tuple(1 - p for p in parity)), 8)
    # Assert
    assert right["accuracy"] == 1.0 and wrong["accuracy"] == 0.0


def test_errors_say_what_was_wrong(tiny: dict[str, Path], tmp_path: Path) -> None:
    # Prepare
    base = _base(tiny, "bert", "full")
    bad_mask = {"encoder.layer.0.attention.self.query.weight": torch.ones(3, dtype=torch.bool)}
    # Execute / Assert
    with pytest.raises(ModelError, match="tried: local directory"):
        load_base(ModelSpec(source=str(tmp_path / "absent")))
    with pytest.raises(MaskError, match="expected a mask of shape"):
        finetune(base, CLS, CFG, mask=bad_mask)
    with pytest.raises(DataError, match="language-modeling"):
        finetune(base, LM, CFG)
    with pytest.raises(ConfigError):
        TrainConfig(optimizer="adam")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        ModelSpec(method="prefix")  # type: ignore[arg-type]


def test_fisher_probe_ranks_entries_by_gradient_squares_times_delta(
    tiny: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: every step's gradients, read where the loop clips them (an independent path)
    base = _base(tiny, "bert", "full")
    steps: list[list[torch.Tensor]] = []
    real = torch.nn.utils.clip_grad_norm_

    def spy(params, *args, **kwargs):  # type: ignore[no-untyped-def]
        params = list(params)
        steps.append([p.grad.detach().float().square() for p in params])
        return real(params, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)

    # Execute
    result = probe(base, CLS, CFG, density=0.1, scores="fisher")
    monkeypatch.undo()
    dense = finetune(base, CLS, CFG).delta

    # Assert: the kept entries are the top 10% of sqrt(sum of g^2) x |delta|, their values the
    # delta, their scores that product (the shared tensors come first among the parameters)
    assert len(steps) == CFG.max_steps and result.scores is not None
    fisher = [sum(s[i] for s in steps) for i in range(len(steps[0]))]
    for (name, d), f in zip(dense.items(), fisher, strict=False):
        assert f.shape == d.shape, name
        want = (f.sqrt() * d.abs()).reshape(-1)
        kept, scores = result.sparse[name], result.scores[name]
        assert torch.equal(kept.values, d.reshape(-1)[kept.indices])
        assert torch.equal(scores.indices, kept.indices)
        assert torch.allclose(scores.values, want[kept.indices], rtol=1e-6, atol=0)
        if kept.indices.numel():
            others = torch.ones(d.numel(), dtype=torch.bool)
            others[kept.indices] = False
            assert bool((want[others] <= want[kept.indices].min() * (1 + 1e-6)).all()), name
    plain = probe(base, CLS, CFG, density=0.1)
    assert plain.scores is None
    assert any(
        not torch.equal(plain.sparse[n].indices, result.sparse[n].indices) for n in dense
    )  # the ranking moved somewhere
