"""PEFT adapters (LoRA, IA3) on a task model, and the split of its parameters into space and head.

The adapter's shared-space names are ``get_peft_model_state_dict`` keys (the parameter name with
the adapter name ``.default`` removed). The team head is wrapped by PEFT's ``modules_to_save``
(so a saved adapter directory carries it); its tensors are reported under their plain Hugging
Face names (``classifier.weight``).
"""

from __future__ import annotations

from torch import nn

from medusa_fed.errors import ModelError
from medusa_fed.training.config import ModelSpec

ADAPTER = "default"
_WRAP_PREFIX = "base_model.model."
_SAVE_MARK = f".modules_to_save.{ADAPTER}"


def adapter_config(spec: ModelSpec, head_modules: list[str], classifier: bool) -> object:
    """The PEFT config for ``spec`` (LoraConfig or IA3Config)."""
    from peft import IA3Config, LoraConfig, TaskType

    task = TaskType.SEQ_CLS if classifier else TaskType.CAUSAL_LM
    targets: list[str] | str | None = list(spec.target_modules) if spec.target_modules else None
    if targets is None and spec.method == "lora" and not classifier:
        targets = "all-linear"  # a causal LM: every attention and MLP projection (not lm_head)
    save = head_modules or None
    if spec.method == "lora":
        return LoraConfig(
            task_type=task,
            r=spec.lora_r,
            lora_alpha=spec.lora_alpha,
            lora_dropout=spec.lora_dropout,
            target_modules=targets,
            modules_to_save=save,
        )
    ff = list(spec.feedforward_modules) if spec.feedforward_modules else None
    return IA3Config(
        task_type=task, target_modules=targets, feedforward_modules=ff, modules_to_save=save
    )


def wrap_with_adapter(
    module: nn.Module, spec: ModelSpec, head_modules: list[str], classifier: bool
) -> nn.Module:
    """``get_peft_model`` with the spec's adapter; ModelError if PEFT refuses the model."""
    from peft import get_peft_model

    try:
        return get_peft_model(module, adapter_config(spec, head_modules, classifier))  # type: ignore[call-overload,no-any-return]
    except (ValueError, KeyError) as exc:
        raise ModelError(
            f"PEFT could not add a {spec.method} adapter to {type(module).__name__} ({exc}); "
            "set target_modules in the model spec"
        ) from exc


def split_peft_params(
    peft_model: nn.Module,
) -> tuple[dict[str, nn.Parameter], dict[str, nn.Parameter]]:
    """(adapter params by state-dict key, head params by HF task-model name)."""
    from peft import get_peft_model_state_dict

    keys = set(get_peft_model_state_dict(peft_model))
    shared: dict[str, nn.Parameter] = {}
    head: dict[str, nn.Parameter] = {}
    for name, param in peft_model.named_parameters():
        if not param.requires_grad:
            continue
        if _SAVE_MARK in name:
            plain = name.replace(_SAVE_MARK, "")
            head[plain.removeprefix(_WRAP_PREFIX)] = param
        else:
            shared[name.replace(f".{ADAPTER}", "")] = param
    if not shared or not set(shared) <= keys:
        raise ModelError(
            f"adapter parameters {sorted(set(shared) - keys)[:3]} are not in PEFT's saved state; "
            "the adapter's names cannot be the shared space"
        )
    return shared, head
