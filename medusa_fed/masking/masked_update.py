"""Masked fine-tuning (paper Algorithm 2): a team updates only the elements it owns, bit for bit.

Zeroing the gradient of non-owned elements is not enough: AdamW's decoupled weight decay (and SGD's
coupled weight decay, through momentum) still moves them. :class:`MaskedUpdate` therefore does two
things per masked tensor:

1. a gradient hook multiplies the gradient by the mask, so optimizer state (Adam moments, SGD
   momentum) stays exactly zero on non-owned elements and gradient clipping sees only owned
   gradients;
2. after every optimizer step (a step post-hook on the optimizer, or an explicit
   :meth:`MaskedUpdate.after_step`), non-owned elements are copied back from a saved copy of their
   start values (``torch.where`` with ``out=``), which undoes weight decay exactly.

Tensors owned entirely need neither (nothing stored); tensors owned nowhere are frozen
(``requires_grad=False``: no gradient, so the optimizer skips them and nothing is stored either).
Memory per partly owned element: a 2-byte gradient mask, a 1-byte restore mask and the 4-byte
start value.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from medusa_fed.errors import PayloadError

log = logging.getLogger(__name__)


class MaskError(PayloadError):
    """A mask does not fit the model (unknown tensor name, wrong shape or dtype)."""


@dataclass
class _Partial:
    param: nn.Parameter
    grad_mask: torch.Tensor  # bf16 0/1, multiplies the gradient (exact; faster than bool ops)
    owned: torch.Tensor  # bool, True where the team may write
    start: torch.Tensor  # the start values (restored where ``owned`` is False)


def check_masks(
    named_params: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]
) -> None:
    """Raise MaskError unless every mask names a parameter and matches its shape."""
    unknown = sorted(set(masks) - set(named_params))
    if unknown:
        raise MaskError(
            f"mask names {len(unknown)} tensor(s) the model does not have, e.g. {unknown[:3]}; "
            f"expected names of the shared space (e.g. {sorted(named_params)[:2]}); "
            "masked fine-tuning not started"
        )
    for name, mask in masks.items():
        shape = tuple(named_params[name].shape)
        if tuple(mask.shape) != shape:
            raise MaskError(
                f"{name}: expected a mask of shape {shape} (the parameter), found "
                f"{tuple(mask.shape)}; masked fine-tuning not started"
            )
        if mask.dtype not in (torch.bool, torch.uint8):
            raise MaskError(f"{name}: expected a bool or uint8 mask, found {mask.dtype}")


class MaskedUpdate:
    """Keep non-owned elements of ``named_params`` at their current values through training.

    Parameters
    ----------
    named_params : Mapping[str, nn.Parameter]
        The trainable tensors, by shared-space name. Their values *now* are the start values.
    masks : Mapping[str, torch.Tensor]
        bool (or 0/1 uint8) tensor per name, True where the team owns the element. A parameter
        without a mask is left alone (e.g. the team head); pass an all-False mask to freeze one.
    optimizer : torch.optim.Optimizer | None (default: None)
        If given, :meth:`after_step` runs automatically after each ``optimizer.step()``.
    """

    def __init__(
        self,
        named_params: Mapping[str, nn.Parameter],
        masks: Mapping[str, torch.Tensor],
        optimizer: torch.optim.Optimizer | None = None,
    ) -> None:
        check_masks(named_params, masks)
        self._partial: list[_Partial] = []
        self._frozen: list[nn.Parameter] = []
        self._handles: list[RemovableHandle] = []
        for name, raw in masks.items():
            param = named_params[name]
            owned = raw.to(device=param.device, dtype=torch.bool)
            n_owned = int(owned.sum())
            if n_owned == owned.numel():
                continue  # owned entirely: nothing to guard
            if n_owned == 0 and param.requires_grad:
                param.requires_grad_(False)  # no grad -> the optimizer skips it entirely
                param.grad = None
                self._frozen.append(param)
                continue
            part = _Partial(
                param=param,
                grad_mask=owned.to(torch.bfloat16),
                owned=owned,
                start=param.detach().clone(),
            )
            self._handles.append(
                param.register_post_accumulate_grad_hook(_grad_masker(part.grad_mask))
            )
            self._partial.append(part)
        if optimizer is not None:
            self._handles.append(optimizer.register_step_post_hook(self._post_step))
        log.debug(
            "masked update: %d partly owned, %d frozen of %d masked tensors",
            len(self._partial),
            len(self._frozen),
            len(masks),
        )

    def _post_step(self, *_: object) -> None:
        self.after_step()

    @torch.no_grad()
    def after_step(self) -> None:
        """Copy the start values back into every non-owned element (call after each step)."""
        for part in self._partial:
            torch.where(part.owned, part.param, part.start, out=part.param.data)

    def remove(self) -> None:
        """Detach hooks and unfreeze frozen tensors; the values stay as they are."""
        for handle in self._handles:
            handle.remove()
        for param in self._frozen:
            param.requires_grad_(True)
        self._handles.clear()
        self._frozen.clear()
        self._partial.clear()


def _grad_masker(grad_mask: torch.Tensor):  # type: ignore[no-untyped-def]
    def hook(param: torch.Tensor) -> None:  # after the gradient is accumulated into .grad
        if param.grad is not None:
            param.grad.mul_(grad_mask)

    return hook
