"""Team-side training engine: the base model and shared space, probe, (masked) fine-tune, evaluate.

Modules: ``config`` (ModelSpec, TrainConfig), ``models`` (load_base, BaseModel, the shared space),
``peft_setup`` (LoRA / IA3), ``loop`` (the training loop), ``branch`` (probe, finetune),
``evaluate``, ``export`` (safetensors and model directories), ``tiny_models`` (test checkpoints),
``data`` / ``tasks`` / ``splits`` / ``metrics`` (a team's data and scores).

Importing this package stays cheap: the names below load their modules on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ModelSpec": "config",
    "TrainConfig": "config",
    "BaseModel": "models",
    "TeamModel": "models",
    "load_base": "models",
    "ProbeResult": "branch",
    "BranchResult": "branch",
    "probe": "branch",
    "finetune": "branch",
    "evaluate": "evaluate",
    "evaluate_model": "evaluate",
    "save_model_dir": "export",
    "save_state": "export",
    "load_state": "export",
    "save_sparse": "export",
    "load_sparse": "export",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"medusa_fed.training.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'medusa_fed.training' has no attribute {name!r}")
