"""Probe (paper Algorithm 1's input) and branch fine-tuning (Algorithm 2) for one team.

* :func:`probe`: an unmasked fine-tune from the base for the probe budget, then the top-d
  fraction of each shared tensor's delta (:func:`medusa_fed.deltas.top_d`).
* :func:`finetune`: a (masked) fine-tune from ``start`` (default: the base). The returned delta
  is ``tuned - start`` in fp32 over the whole shared space and is exactly zero wherever the mask
  is False (non-owned elements equal ``start`` bit for bit). ``mask=None`` is an uncontrolled,
  unmasked branch; ``head_only=True`` trains only the team head on the frozen base (the floor).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from medusa_fed.deltas import SparseDelta, StateDict, state_delta, top_d
from medusa_fed.errors import DataError
from medusa_fed.masking import check_masks
from medusa_fed.training.chat import ChatTask, Framing
from medusa_fed.training.config import ProbeScores, TrainConfig
from medusa_fed.training.instruct import GENERIC_INSTRUCTION, Prompter
from medusa_fed.training.loop import train
from medusa_fed.training.models import BaseModel

if TYPE_CHECKING:
    from medusa_fed.training.data import TaskData

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProbeResult:
    """A probe: top-d sparse delta per shared tensor, training metrics, and the probe's head."""

    sparse: dict[str, SparseDelta]
    metrics: dict[str, float]
    head: StateDict
    # probe-scores = fisher: each kept entry's score (same indices as ``sparse``), else None
    scores: dict[str, SparseDelta] | None = None


@dataclass(frozen=True)
class BranchResult:
    """A fine-tuned branch: delta over the shared space (fp32, relative to its start), head."""

    delta: StateDict
    head: StateDict
    metrics: dict[str, float]


def num_labels_of(base: BaseModel, data: TaskData) -> int | None:
    """The head size for ``data`` (None for a causal LM); DataError if task and model disagree.

    A causal LM takes a labelled task or a team's instruction file as instructions
    (:func:`prompter_of`) or raw text; a classifier needs labels."""
    if base.is_classifier and data.kind != "classification":
        raise DataError(
            f"task {data.name!r} is {data.kind} but the model family is {base.spec.family}; "
            "pick a labelled task or a causal-lm model"
        )
    return len(data.labels) if base.is_classifier else None


def prompter_of(base: BaseModel, data: TaskData) -> Framing | None:
    """How a causal LM sees a task: a labelled task's instruction and label words, or a team's
    instruction file (its closed answer set, if any); None for a classifier or raw text."""
    if base.is_classifier:
        return None
    if data.kind == "instruction":
        return ChatTask(data.answers)
    if data.kind != "classification":
        return None
    return Prompter(data.instruction or GENERIC_INSTRUCTION, data.labels)


def probe(
    base: BaseModel,
    data: TaskData,
    cfg: TrainConfig,
    density: float = 0.2,
    scores: ProbeScores = "delta",
) -> ProbeResult:
    """Unmasked fine-tune from the base, then keep each shared tensor's top-``density`` delta.

    ``scores = "fisher"`` ranks the entries by ``sqrt(F) x |delta|`` instead of ``|delta|``, with
    ``F`` the squared gradients summed over the probe's steps (the empirical Fisher diagonal up
    to a constant): the square root of ``F x delta^2``, about twice the loss the team would
    regain if the element went back to the base (a second-order estimate), so an element the
    team's loss is flat in ranks low however far it moved. The square root keeps the order and
    halves the dynamic range the scaled-fp16 codec must hold. The kept entries carry their delta
    as values and the score in ``ProbeResult.scores``.

    Parameters
    ----------
    base : BaseModel
    data : TaskData
        Trains on ``data.train``.
    cfg : TrainConfig
        The probe budget (``epochs`` defaults to 1, the paper's probe).
    density : float (default: 0.2)
        Fraction of each tensor's entries kept, by magnitude.
    scores : "delta" | "fisher" (default: "delta")
        What ranks the entries (above).
    """
    fisher: dict[str, torch.Tensor] | None = {} if scores == "fisher" else None
    result = finetune(base, data, cfg, desc=f"probe {data.name}", grad_squares=fisher)
    kept_scores: dict[str, SparseDelta] | None = None
    if fisher is None:
        sparse = {name: top_d(d, density) for name, d in result.delta.items()}
    else:
        sparse, kept_scores = {}, {}
        for name, d in result.delta.items():
            score = fisher.get(name, torch.zeros_like(d)).reshape(d.shape).sqrt() * d.abs()
            sparse[name] = top_d(d, density, key=score)
            idx = sparse[name].indices
            kept_scores[name] = SparseDelta(sparse[name].shape, idx, score.reshape(-1)[idx])
    kept = sum(s.indices.numel() for s in sparse.values())
    log.info(
        "probe %s: kept %d of %d delta entries",
        data.name,
        kept,
        sum(d.numel() for d in result.delta.values()),
    )
    return ProbeResult(sparse, result.metrics, result.head, kept_scores)


def finetune(
    base: BaseModel,
    data: TaskData,
    cfg: TrainConfig,
    mask: Mapping[str, torch.Tensor] | None = None,
    start: Mapping[str, torch.Tensor] | None = None,
    head: Mapping[str, torch.Tensor] | None = None,
    head_only: bool = False,
    desc: str | None = None,
    grad_squares: dict[str, torch.Tensor] | None = None,
) -> BranchResult:
    """Fine-tune one branch on ``data.train``.

    Parameters
    ----------
    mask : Mapping[str, Tensor] | None (default: None)
        bool per shared tensor, True = owned. Tensors without a mask entry stay at ``start``
        (a partial mask is a complete one with False elsewhere). None: unmasked.
    start : Mapping[str, Tensor] | None (default: None)
        Shared-space values to start from (e.g. a merged model); None = the base.
    head : Mapping[str, Tensor] | None (default: None)
        The team head to continue; None = a fresh head seeded by ``cfg.seed``.
    head_only : bool (default: False)
        Freeze the shared space; train only the head (delta is all zeros).
    grad_squares : dict | None (default: None)
        An empty dict the run fills with each shared tensor's squared gradients summed over the
        steps (:func:`medusa_fed.training.loop.train`).
    """
    labels = num_labels_of(base, data)
    team = base.build(labels, shared=start, head=head, head_seed=cfg.seed)
    begin = team.shared_state()
    masks = None
    if mask is not None:
        check_masks(team.shared, mask)
        masks = {
            n: mask.get(n, torch.zeros(p.shape, dtype=torch.bool)) for n, p in team.shared.items()
        }
    metrics = train(
        team,
        base.tokenizer,
        data.train,
        cfg,
        base.spec.method,
        masks=masks,
        head_only=head_only,
        desc=desc or f"finetune {data.name}",
        prompter=prompter_of(base, data),
        grad_squares=grad_squares,
    )
    delta = state_delta(team.shared_state(), begin)
    if masks is not None:
        metrics["owned_fraction"] = sum(int(m.sum()) for m in masks.values()) / max(
            1, sum(m.numel() for m in masks.values())
        )
    return BranchResult(delta, team.head_state(), metrics)


def refit_head(
    base: BaseModel,
    data: TaskData,
    cfg: TrainConfig,
    shared: Mapping[str, torch.Tensor],
    head: Mapping[str, torch.Tensor] | None,
    desc: str | None = None,
) -> StateDict:
    """A team's head trained further on frozen shared weights (e.g. a merged encoder) with
    ``cfg``; the shared weights do not change."""
    return finetune(
        base, data, cfg, start=shared, head=head, head_only=True, desc=desc or f"refit {data.name}"
    ).head
