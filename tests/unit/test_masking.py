"""Masked updates: non-owned elements stay bit-exact under AdamW / SGD with weight decay."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from torch import nn

from medusa_fed.masking import MaskedUpdate, MaskError, load_mask, mask_from_ownership
from medusa_fed.training.loop import adamw


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    for _ in range(steps):
        x = torch.randn(5, 6, generator=gen).to(device)
        loss = model(x).pow(2).mean()
        if not loss.requires_grad:  # the masks own nothing: every tensor frozen, as in loop.py
            return
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()


def _optimizer(kind: str, model: nn.Module) -> torch.optim.Optimizer:
    if kind == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.3)
    if kind == "adamw-fused":  # what training uses (medusa_fed.training.loop.adamw)
        opt = adamw(model.parameters(), lr=0.05, weight_decay=0.3)
        assert opt.defaults["fused"]  # CPU and CUDA have the kernel
        return opt
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=0.3)


DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]  # whatever is present


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=15, deadline=None)
@example(seed=292, density=0.05, kind="adamw")  # every mask all-False: nothing trainable
@example(seed=7, density=0.4, kind="adamw-fused")  # the optimizer training uses, every run
@given(
    seed=st.integers(0, 10_000),
    density=st.floats(0.05, 1.0),
    kind=st.sampled_from(["adamw", "adamw-fused", "sgd"]),
)
def test_non_owned_elements_stay_bit_exact(
    seed: int, density: float, kind: str, device: str
) -> None:
    # Prepare
    model = _model(seed).to(device)
    named = dict(model.named_parameters())
    gen = torch.Generator().manual_seed(seed)
    masks = {n: torch.rand(p.shape, generator=gen) < density for n, p in named.items()}
    start = {n: p.detach().clone() for n, p in named.items()}
    opt = _optimizer(kind, model)
    MaskedUpdate(named, masks, opt)
    # Execute
    _train(model, opt, steps=25, seed=seed)
    # Assert
    for name, p in named.items():
        frozen = ~masks[name].to(device)
        assert torch.equal(
            p.detach()[frozen].view(torch.int32), start[name][frozen].view(torch.int32)
        )


@pytest.mark.parametrize("kind", ["adamw", "sgd"])
def test_owned_elements_move_and_unmasked_tensors_train(kind: str) -> None:
    # Prepare
    model = _model(1)
    named = dict(model.named_parameters())
    start = {n: p.detach().clone() for n, p in named.items()}
    mask = torch.zeros(8, 6, dtype=torch.bool)
    mask[:4] = True
    opt = _optimizer(kind, model)
    MaskedUpdate(named, {"0.weight": mask, "0.bias": torch.zeros(8, dtype=torch.bool)}, opt)
    # Execute
    _train(model, opt, steps=10, seed=1)
    # Assert
    moved = named["0.weight"].detach() != start["0.weight"]
    assert bool(moved[:4].all()) and not bool(moved[4:].any())
    assert torch.equal(named["0.bias"].detach(), start["0.bias"])  # all-False: frozen
    assert not torch.equal(named["2.weight"].detach(), start["2.weight"])  # no mask: trains


def test_without_mask_weight_decay_would_move_non_owned_elements() -> None:
    # Prepare: the control experiment (grad zeroing alone is not enough)
    model = _model(2)
    named = dict(model.named_parameters())
    start = named["0.weight"].detach().clone()
    opt = _optimizer("adamw", model)
    named["0.weight"].register_hook(lambda g: g * 0)
    # Execute
    _train(model, opt, steps=3, seed=2)
    # Assert
    assert not torch.equal(named["0.weight"].detach(), start)


def test_after_step_without_optimizer_hook_restores() -> None:
    # Prepare
    model = _model(3)
    named = dict(model.named_parameters())
    start = named["2.bias"].detach().clone()
    guard = MaskedUpdate(named, {"2.bias": torch.tensor([True, False, False])})
    opt = _optimizer("sgd", model)
    # Execute
    _train(model, opt, steps=3, seed=3)
    guard.after_step()
    # Assert
    assert torch.equal(named["2.bias"].detach()[1:], start[1:])
    assert named["2.bias"].detach()[0] != start[0]


@pytest.mark.parametrize(
    ("masks", "match"),
    [
        ({"nope.weight": torch.ones(2, dtype=torch.bool)}, "does not have"),
        ({"0.weight": torch.ones(6, 8, dtype=torch.bool)}, r"expected a mask of shape \(8, 6\)"),
        ({"0.bias": torch.ones(8)}, "bool or uint8"),
    ],
)
def test_bad_masks_are_refused(masks: dict[str, torch.Tensor], match: str) -> None:
    # Prepare
    named = dict(_model(0).named_parameters())
    # Execute / Assert
    with pytest.raises(MaskError, match=match):
        MaskedUpdate(named, masks)


def test_mask_files_and_ownership_maps(tmp_path: Path) -> None:
    # Prepare
    ids = torch.tensor([[0, 1, 255], [1, 1, 0]], dtype=torch.uint8)
    meta = {"medusa_ownership": json.dumps({"teams": ["a", "b"], "uncontrolled": ["u"]})}
    save_file({"w": ids}, str(tmp_path / "own.safetensors"), metadata=meta)
    save_file({"w": ids == 1}, str(tmp_path / "mask.safetensors"))
    # Execute
    mask_b = mask_from_ownership(tmp_path / "own.safetensors", "b")
    uncontrolled = mask_from_ownership(tmp_path / "own.safetensors", "u")
    from_file = load_mask(tmp_path / "mask.safetensors")
    # Assert
    assert mask_b is not None and mask_b["w"].tolist() == [
        [False, True, False],
        [True, True, False],
    ]
    assert uncontrolled is None
    assert torch.equal(from_file["w"], mask_b["w"])
    with pytest.raises(MaskError, match="not in the ownership map"):
        mask_from_ownership(tmp_path / "own.safetensors", "zed")
    with pytest.raises(MaskError, match="other than 0/1"):
        load_mask(tmp_path / "own.safetensors")


def test_a_parameter_whose_elements_have_no_integer_view_is_refused_in_one_line() -> None:
    # Prepare: complex128 (16-byte elements): the guard works on an integer view of the bits
    named = {"z": torch.nn.Parameter(torch.zeros(3, dtype=torch.complex128))}
    # Execute / Assert
    with pytest.raises(
        MaskError, match=r"z: expected a parameter of 1, 2, 4 or 8-byte .*complex128"
    ):
        MaskedUpdate(named, {"z": torch.tensor([True, False, True])})
