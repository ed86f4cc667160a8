"""Where a team trains and scores: ``auto`` (CUDA when present, else CPU), ``cpu`` or ``cuda``.

The model moves to the device for one training or scoring call and back to CPU afterwards
(:func:`on_device`), so everything around it (deltas, payloads, the run directory) keeps working
on CPU tensors. On CUDA the forward pass runs under bf16 autocast where the GPU supports bf16
(:func:`autocast`); the weights, the optimizer and the mask stay fp32, so masked training keeps
non-owned elements bit for bit on any device. On CPU nothing changes: no autocast.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import torch
from torch import nn

from medusa_fed.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")


def check_device(name: str) -> None:
    """ConfigError unless ``name`` is ``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""
    if name not in DEVICES and not re.fullmatch(r"cuda:\d+", name):
        raise ConfigError(f"device: expected one of auto, cpu, cuda, cuda:N; found {name!r}")


def resolve_device(name: str) -> torch.device:
    """The torch device for ``name``; ConfigError when CUDA is asked for and absent."""
    check_device(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"device {name!r}: expected a CUDA device, found none (torch {torch.__version__}, "
            f"CUDA build: {torch.version.cuda or 'no'}); use device auto or cpu"
        )
    return torch.device(name)


def autocast(device: torch.device) -> contextlib.AbstractContextManager[object]:
    """bf16 autocast on a CUDA device that supports bf16; a no-op elsewhere."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def on_device(module: nn.Module, device: torch.device) -> Iterator[None]:
    """Run the body with ``module`` on ``device``; back on CPU afterwards, even on error.

    ``module.to`` swaps each parameter's data in place, so references to the parameters (the
    shared space, the head, a mask guard) stay valid on both sides.
    """
    if device.type == "cpu":
        yield
        return
    module.to(device)
    try:
        yield
    finally:
        module.to("cpu")
