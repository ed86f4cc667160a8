"""Write results to disk: safetensors of states and probe deltas, and loadable model directories.

* :func:`save_model_dir`: a Hugging Face directory for base + shared state + head. Full
  fine-tuning gives a ``from_pretrained``-loadable model (a classifier carries ``id2label``);
  LoRA / IA3 give a PEFT adapter directory (``PeftModel.from_pretrained(base_task_model, dir)``,
  the head saved through ``modules_to_save``), or with ``merged=True`` a plain model with the
  adapter folded in.
* :func:`save_state` / :func:`load_state`: one safetensors file of fp32 tensors plus string
  metadata. :func:`save_sparse` / :func:`load_sparse`: top-d probe deltas as ``NAME|indices`` and
  ``NAME|values`` tensors, shapes in the metadata.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from medusa_fed.deltas import SparseDelta, StateDict
from medusa_fed.errors import PayloadError
from medusa_fed.rundir.atomic import atomic_write
from medusa_fed.rundir.tensors import safetensors_bytes
from medusa_fed.training.models import BaseModel, labels_from_head, quiet_transformers


def save_state(
    path: Path, state: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> Path:
    """Write ``state`` (contiguous CPU copies) to ``path`` as safetensors."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {n: t.detach().cpu().contiguous() for n, t in state.items()}
    atomic_write(path, safetensors_bytes(tensors, metadata))
    return path


def load_state(path: Path) -> tuple[StateDict, dict[str, str]]:
    """Tensors and metadata of a safetensors file."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
        return load_file(str(path)), metadata
    except (OSError, ValueError, SafetensorError) as exc:
        raise PayloadError(
            f"{path}: expected a safetensors file, could not read it ({exc})"
        ) from exc


def save_sparse(path: Path, sparse: Mapping[str, SparseDelta]) -> Path:
    tensors: StateDict = {}
    for name, s in sparse.items():
        tensors[f"{name}|indices"] = s.indices
        tensors[f"{name}|values"] = s.values.to(torch.float32)
    shapes = {n: list(s.shape) for n, s in sparse.items()}
    return save_state(path, tensors, {"shapes": json.dumps(shapes)})


def load_sparse(path: Path) -> dict[str, SparseDelta]:
    tensors, metadata = load_state(path)
    shapes = json.loads(metadata.get("shapes", "{}"))
    out: dict[str, SparseDelta] = {}
    for name, shape in shapes.items():
        out[name] = SparseDelta(tuple(shape), tensors[f"{name}|indices"], tensors[f"{name}|values"])
        out[name].validate(name)
    return out


def save_model_dir(
    base: BaseModel,
    directory: Path,
    shared: Mapping[str, torch.Tensor] | None = None,
    head: Mapping[str, torch.Tensor] | None = None,
    labels: tuple[str, ...] | None = None,
    merged: bool = False,
) -> Path:
    """Save base + ``shared`` + ``head`` as a Hugging Face (or PEFT adapter) directory.

    Parameters
    ----------
    shared : Mapping[str, Tensor] | None (default: None)
        Shared-space values; None = the base's.
    head : Mapping[str, Tensor] | None (default: None)
        The team head (classifier); None = a fresh seeded head.
    labels : tuple[str, ...] | None (default: None)
        Class names, in label-id order; written as ``id2label`` / ``label2id``.
    merged : bool (default: False)
        LoRA / IA3 only: fold the adapter into the weights and save a plain model.
    """
    num_labels = len(labels) if labels else None
    if base.is_classifier and num_labels is None and head is not None:
        num_labels = labels_from_head(head)
    team = base.build(num_labels, shared=shared, head=head)
    module: Any = team.module
    if labels:
        config = module.config  # PeftModel forwards .config to the wrapped model
        config.id2label = dict(enumerate(labels))
        config.label2id = {label: i for i, label in enumerate(labels)}
    if base.spec.method != "full" and merged:
        module = module.merge_and_unload()  # type: ignore[operator]
    directory.mkdir(parents=True, exist_ok=True)
    with quiet_transformers():
        module.save_pretrained(str(directory))
        base.tokenizer.save_pretrained(str(directory))  # type: ignore[attr-defined]
    return directory
