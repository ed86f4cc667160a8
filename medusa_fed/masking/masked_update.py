"""Masked fine-tuning (paper Algorithm 2): a team updates only the elements it owns, bit for bit.

Zeroing the gradient of non-owned elements is not enough: AdamW's decoupled weight decay (and SGD's
coupled weight decay, through momentum) still moves them. :class:`MaskedUpdate` therefore does two
things per masked tensor:

1. a gradient hook sets the gradient of non-owned elements to +0.0, so optimizer state (Adam
   moments, SGD momentum) stays exactly zero there and gradient clipping sees only owned
   gradients;
2. after every optimizer step (a step post-hook on the optimizer, or an explicit
   :meth:`MaskedUpdate.after_step`), non-owned elements get their start values back, which undoes
   weight decay exactly.

Both are bitwise operations on the tensors' bits (an integer view of the same element size): a
bit mask ``m`` (all ones where owned, zeros elsewhere) ANDed into the gradient, and
``param = (param & m) | (start & ~m)`` after the step. That is exact by construction (no float
arithmetic touches a value) and vectorised: a ``torch.where`` with a bool condition, the earlier
restore, ran at about 6.6 ns per element on this machine's CPU and cost 0.15 s per MiniLM step.

Tensors owned entirely need neither (nothing stored); tensors owned nowhere are frozen
(``requires_grad=False``: no gradient, so the optimizer skips them and nothing is stored either).
Memory per partly owned element: the bit mask and the start's non-owned bits, one element size
each (8 bytes for fp32).
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


_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _bits(t: torch.Tensor) -> torch.Tensor:
    """``t``'s elements as integers of the same size (a view: writes go to ``t``)."""
    return t.view(_BITS[t.element_size()])


@dataclass
class _Partial:
    param: nn.Parameter
    keep: torch.Tensor  # integer bit mask: all ones where the team owns the element, else 0
    start: torch.Tensor  # the start values' bits where not owned, 0 where owned


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
        size = named_params[name].element_size()
        if size not in _BITS:
            raise MaskError(
                f"{name}: expected a parameter of 1, 2, 4 or 8-byte elements (the guard works on "
                f"their bits), found {named_params[name].dtype} ({size} bytes); masked "
                "fine-tuning not started"
            )


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
            start = _bits(param.detach())
            keep = owned.to(start.dtype).neg_()  # True -> -1: every bit set
            part = _Partial(param=param, keep=keep, start=start & keep.bitwise_not())
            self._handles.append(param.register_post_accumulate_grad_hook(_grad_masker(keep)))
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
            bits = _bits(part.param.data)
            bits.bitwise_and_(part.keep).bitwise_or_(part.start)

    @torch.no_grad()
    def mask_gradients(self) -> None:
        """What the gradient hooks do, for every partly owned tensor (idempotent)."""
        for part in self._partial:
            if part.param.grad is not None:
                _bits(part.param.grad).bitwise_and_(part.keep)

    @property
    def nbytes(self) -> int:
        """Bytes the guard holds (bit masks and start values of the partly owned tensors)."""
        return sum(part.keep.nbytes + part.start.nbytes for part in self._partial)

    def remove(self) -> None:
        """Detach hooks and unfreeze frozen tensors; the values stay as they are."""
        for handle in self._handles:
            handle.remove()
        for param in self._frozen:
            param.requires_grad_(True)
        self._handles.clear()
        self._frozen.clear()
        self._partial.clear()


def _grad_masker(keep: torch.Tensor):  # type: ignore[no-untyped-def]
    def hook(param: torch.Tensor) -> None:  # after the gradient is accumulated into .grad
        if param.grad is not None:
            _bits(param.grad).bitwise_and_(keep)  # non-owned gradients -> +0.0

    return hook
