"""What to fine-tune (:class:`ModelSpec`) and how (:class:`TrainConfig`); validated on creation."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

from medusa_fed.errors import ConfigError
from medusa_fed.training.device import check_device

Family = Literal["encoder-classifier", "causal-lm"]
Method = Literal["full", "lora", "ia3"]
Optimizer = Literal["adamw", "sgd"]
# what ranks a probe's entries: |delta| (the paper) or Fisher x delta^2 (training.branch.probe)
ProbeScores = Literal["delta", "fisher"]
BUNDLED_NAMES = ("all-MiniLM-L6-v2", "minilm")
# causal LMs that ship as packages (medusa_fed.training.packaged); their family is causal-lm
PACKAGED_LLM_NAMES = ("smollm2-135m-instruct",)


def family_of(source: str, family: Family) -> Family:
    """The family a model source fixes: a packaged causal LM is ``causal-lm`` whatever the
    (default) family says; any other source keeps ``family``."""
    return "causal-lm" if source.strip().lower() in PACKAGED_LLM_NAMES else family


def default_method(source: str) -> Method:
    """LoRA for a packaged causal LM (what teams tune LLMs with), full fine-tuning otherwise."""
    return "lora" if family_of(source, "encoder-classifier") == "causal-lm" else "full"


@dataclass(frozen=True)
class ModelSpec:
    """The base model and the fine-tuning method; identical at every site and the coordinator."""

    source: str = "all-MiniLM-L6-v2"  # bundled model name ("minilm") or a local HF directory
    family: Family = "encoder-classifier"  # sequence classifier on an encoder, or a causal LM
    method: Method = "full"  # full fine-tuning, or PEFT LoRA / IA3 adapters
    lora_r: int = 8  # LoRA rank
    lora_alpha: int = 16  # LoRA scaling numerator (scale = alpha / r)
    lora_dropout: float = 0.0  # dropout on the LoRA input (0 keeps probe and branch comparable)
    target_modules: tuple[str, ...] | None = None  # None: PEFT's default for the model type
    feedforward_modules: tuple[str, ...] | None = None  # IA3 only; None: PEFT's default
    adapter_seed: int = 0  # seeds the adapter init, so every site builds the same start adapter

    def __post_init__(self) -> None:
        if not self.source:
            raise ConfigError("model source is empty; expected 'all-MiniLM-L6-v2' or a directory")
        object.__setattr__(self, "family", family_of(self.source, self.family))
        _choice("family", self.family, Family)
        _choice("method", self.method, Method)
        if self.lora_r < 1 or self.lora_alpha <= 0:
            raise ConfigError(
                f"LoRA needs r >= 1 and alpha > 0, found r={self.lora_r}, alpha={self.lora_alpha}"
            )
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"lora_dropout must be in [0, 1), found {self.lora_dropout}")
        if self.target_modules is not None and not self.target_modules:
            raise ConfigError("target_modules is empty; give module names or None for defaults")

    @property
    def is_bundled(self) -> bool:
        return self.source.lower() in {n.lower() for n in BUNDLED_NAMES}

    @property
    def is_packaged_llm(self) -> bool:
        return self.source.strip().lower() in PACKAGED_LLM_NAMES


@dataclass(frozen=True)
class TrainConfig:
    """One fine-tuning run's budget and optimizer (probe and branch use the same type).

    ``epochs`` defaults to 1, the paper's probe budget; ``max_steps`` > 0 overrides it. The
    learning rate defaults by method (:meth:`lr_for`): 5e-5 for full fine-tuning, 1e-3 for
    LoRA / IA3 (adapters start at zero effect and need larger steps). Weight decay is applied
    to every trainable tensor (the case masking must survive). The schedule is linear decay
    to zero after ``warmup_ratio`` of the steps.
    """

    epochs: float = 1.0  # passes over the training split (fractions allowed)
    max_steps: int = 0  # > 0: exactly this many optimizer steps, overriding epochs
    lr: float | None = None  # None: 5e-5 (full) or 1e-3 (lora, ia3)
    head_lr: float | None = None  # None: same as lr; the team head's learning rate
    # multiplies the shared tensors' learning rate only (the head keeps head_lr, or lr): masked
    # Medusa training trains a team's owned share of the elements and takes larger steps there
    shared_lr_scale: float = 1.0
    batch_size: int = 16
    weight_decay: float = 0.01
    optimizer: Optimizer = "adamw"
    momentum: float = 0.9  # SGD only
    max_length: int = 128  # tokens per example (longer texts are truncated)
    warmup_ratio: float = 0.0  # fraction of steps with linearly rising learning rate
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    seed: int = 0  # shuffling, dropout and head init
    device: str = "auto"  # auto (CUDA when present), cpu, cuda or cuda:N; bf16 autocast on CUDA

    def __post_init__(self) -> None:
        check_device(self.device)
        if not (self.epochs > 0 and math.isfinite(self.epochs)) and self.max_steps <= 0:
            raise ConfigError(f"epochs must be > 0 (or max_steps > 0), found {self.epochs}")
        if self.max_steps < 0:
            raise ConfigError(f"max_steps must be >= 0, found {self.max_steps}")
        for name in ("lr", "head_lr"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"{name} must be > 0 (or None for the default), found {value}")
        if not (self.shared_lr_scale > 0 and math.isfinite(self.shared_lr_scale)):
            raise ConfigError(
                f"shared_lr_scale must be > 0 and finite, found {self.shared_lr_scale}"
            )
        if self.batch_size < 1 or self.max_length < 2:
            raise ConfigError(
                f"batch_size must be >= 1 and max_length >= 2, found {self.batch_size}, "
                f"{self.max_length}"
            )
        if self.weight_decay < 0 or self.grad_clip < 0 or not 0 <= self.warmup_ratio < 1:
            raise ConfigError(
                "weight_decay and grad_clip must be >= 0 and warmup_ratio in [0, 1); found "
                f"{self.weight_decay}, {self.grad_clip}, {self.warmup_ratio}"
            )
        _choice("optimizer", self.optimizer, Optimizer)
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), found {self.momentum}")

    def lr_for(self, method: Method) -> float:
        if self.lr is not None:
            return self.lr
        return 5e-5 if method == "full" else 1e-3


def _choice(field: str, value: object, allowed: object) -> None:
    options = get_args(allowed)
    if value not in options:
        raise ConfigError(f"{field} must be one of {', '.join(options)}; found {value!r}")


MAX_LR_CHOICES = 8


def parse_lr_scales(text: str) -> tuple[float, ...]:
    """The shared-tensor lr scales of ``"1|2|3"`` (run-config ``masked-lr-choices``); ``""`` is
    none. ValueError naming what was expected when one is not a finite number > 0, repeats, or
    there are more than :data:`MAX_LR_CHOICES`."""
    if not text.strip():
        return ()
    parts = [p.strip() for p in text.split("|")]
    try:
        scales = tuple(float(p) for p in parts)
    except ValueError:
        raise ValueError(f"expected numbers separated by '|', found {text!r}") from None
    if not all(math.isfinite(s) and s > 0 for s in scales):
        raise ValueError(f"expected every scale finite and > 0, found {text!r}")
    if len(set(scales)) < len(scales) or len(scales) > MAX_LR_CHOICES:
        raise ValueError(
            f"expected 1 to {MAX_LR_CHOICES} distinct scales, found {len(scales)} in {text!r}"
        )
    return scales
