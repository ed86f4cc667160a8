"""mergekit's YAML, for the methods both implement, on Hugging Face model folders.

``medusa merge --config merge.yml -o out`` accepts what people who merge models already write::

    merge_method: ties                 # linear | task_arithmetic | ties | dare_linear | dare_ties
    base_model: ./base                 # a Hugging Face folder (optional for linear)
    models:
      - model: ./team-a
        parameters: {weight: 1.0, density: 0.5}
      - model: ./team-b
        parameters: {weight: 1.0, density: 0.5}
    parameters: {lambda: 1.0}          # normalize, rescale, int8_mask: mergekit's meaning
    dtype: float32

Parameter names, mergekit -> medusa-fed (``medusa_fed.merging.spec``):

=================  =====================================================================
mergekit           medusa-fed
=================  =====================================================================
``weight``         one value for every model (w); folded into ``scale`` where the method
                   sums (task_arithmetic, dare_linear), cancelled where it averages
``density``        ``density`` (ties, one value for every model); ``drop_rate = 1 - density``
                   (DARE)
``lambda``         ``scale``
``normalize``      mergekit's default per method; the other setting maps to a medusa-fed
                   method where one exists (dare_linear + normalize = ``dare_linear``, our
                   mean; dare_ties needs ``normalize: true``: ours averages the agreeing
                   deltas, mergekit's default sums them)
``rescale``        DARE's 1 / (1 - p) rescale: must stay true (ours always rescales)
``int8_mask``      accepted, no effect (a memory setting of mergekit)
=================  =====================================================================

Anything else (another method, per-model weights that differ, ``tokenizer_source``, slices)
is refused by name. DARE draws its drop masks from medusa-fed's seeded generator, not
mergekit's, so DARE merges agree in distribution, not bit for bit. The TIES trim keeps
``ceil(density * numel)`` entries per tensor, mergekit ``max(1, int(density * numel))``: the same
whenever ``density * numel`` is whole.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from medusa_fed.errors import ConfigError, MergeError
from medusa_fed.merging.shards import INDEX, MAX_SHARD_BYTES, ShardedTensors
from medusa_fed.merging.spec import MergeSpec
from medusa_fed.merging.streaming import LazyDeltas, merge_to_folder

METHODS = ("linear", "task_arithmetic", "ties", "dare_linear", "dare_ties")
TOP_KEYS = {"merge_method", "base_model", "models", "parameters", "dtype"}
PARAMS = {"weight", "density", "lambda", "normalize", "rescale", "int8_mask"}
NORMALIZE = {"linear": True, "task_arithmetic": False, "ties": True, "dare_linear": False}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class FolderMerge:
    """A mergekit config translated: which folders, which MergeSpec, which output dtype."""

    base: Path
    models: tuple[Path, ...]
    spec: MergeSpec
    dtype: torch.dtype | None


def is_mergekit(raw: Mapping[str, Any]) -> bool:
    """A config that names model folders (``base_model``, or a model entry that is a folder)
    rather than branch ids of the history."""
    if "base_model" in raw:
        return True
    models = raw.get("models") or []
    return any(
        isinstance(m, dict) and Path(str(m.get("model", ""))).expanduser().is_dir() for m in models
    )


def translate(raw: Mapping[str, Any], where: str) -> FolderMerge:
    """The FolderMerge of a mergekit config; ConfigError names what is not implemented."""
    unknown = sorted(set(raw) - TOP_KEYS)
    if unknown:
        raise ConfigError(f"{where}: mergekit keys {unknown} are not implemented by medusa-fed")
    method = str(raw.get("merge_method", ""))
    if method not in METHODS:
        raise ConfigError(
            f"{where}: merge_method {method!r}: expected one of {', '.join(METHODS)} (the "
            "mergekit methods medusa-fed implements)"
        )
    models = raw.get("models") or []
    if not isinstance(models, list) or len(models) < 2:
        raise ConfigError(f"{where}: expected models: a list of at least 2, found {models!r}")
    folders, per_model = [], []
    for item in models:
        if not isinstance(item, dict) or "model" not in item:
            raise ConfigError(f"{where}: expected each model as {{model: FOLDER}}, found {item!r}")
        folders.append(_folder(item["model"], where))
        per_model.append(
            {**dict(raw.get("parameters") or {}), **dict(item.get("parameters") or {})}
        )
    for params in per_model:
        bad = sorted(set(params) - PARAMS)
        if bad:
            raise ConfigError(f"{where}: parameters {bad} are not implemented by medusa-fed")
    weight = _same(per_model, "weight", 1.0, where)
    density = _same(per_model, "density", 1.0, where)
    lam = float(per_model[0].get("lambda", 1.0))
    normalize = bool(per_model[0].get("normalize", NORMALIZE.get(method, False)))
    if not bool(per_model[0].get("rescale", True)):
        raise ConfigError(f"{where}: rescale: false is not implemented (DARE always rescales)")
    spec = _spec(method, weight, density, lam, normalize, where)
    base = _folder(raw["base_model"], where) if "base_model" in raw else folders[0]
    dtype = raw.get("dtype")
    if dtype is not None and str(dtype) not in DTYPES:
        raise ConfigError(f"{where}: dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    return FolderMerge(base, tuple(folders), spec, DTYPES[str(dtype)] if dtype else None)


def _spec(
    method: str, weight: float, density: float, lam: float, normalize: bool, where: str
) -> MergeSpec:
    drop = 1.0 - density
    if method == "linear" and normalize:
        return MergeSpec("linear")
    if method == "task_arithmetic" and not normalize:
        return MergeSpec("task_arithmetic", scale=lam * weight)
    if method == "ties" and normalize:
        return MergeSpec("ties", density=density, scale=lam)
    if method == "dare_linear" and not normalize:
        return MergeSpec("dare_task_arithmetic", drop_rate=drop, scale=lam * weight)
    if method == "dare_linear" and normalize and lam == 1.0:
        return MergeSpec("dare_linear", drop_rate=drop)
    if method == "dare_ties" and normalize:
        return MergeSpec("dare_ties", drop_rate=drop, scale=lam)
    raise ConfigError(
        f"{where}: {method} with normalize: {str(normalize).lower()} (lambda {lam:g}) is not "
        "implemented by medusa-fed; see medusa_fed/merging/mergekit.py for the mapping"
    )


def _same(per_model: list[dict[str, Any]], key: str, default: float, where: str) -> float:
    values = {float(p.get(key, default)) for p in per_model}
    if len(values) > 1:
        raise ConfigError(
            f"{where}: per-model {key} {sorted(values)}: expected one value for every model "
            "(medusa-fed's merges treat the branches alike)"
        )
    return values.pop()


def _folder(value: object, where: str) -> Path:
    path = Path(str(value)).expanduser()
    if not (path / "config.json").is_file():
        raise ConfigError(f"{where}: {value!r}: expected a Hugging Face model folder, found none")
    return path


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a model folder's safetensors files (one or several shards)."""
    if not any(folder.glob("*.safetensors")):
        raise ConfigError(f"{folder}: expected *.safetensors weights, found none")
    return dict(ShardedTensors(folder))


class _Float32(Mapping[str, torch.Tensor]):
    """The floating-point tensors of a lazy model, each read as fp32 when asked for."""

    def __init__(self, tensors: ShardedTensors) -> None:
        self._tensors = tensors
        self._names = [n for n, (_, d) in tensors.layout().items() if d.is_floating_point]

    def layout(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        return {n: (self._tensors.layout()[n][0], torch.float32) for n in self._names}

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._names:
            raise KeyError(name)
        return self._tensors[name].float()

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def merge_folders(job: FolderMerge, out: Path, max_shard_bytes: int = MAX_SHARD_BYTES) -> None:
    """Merge the model folders of ``job`` into ``out``: the base folder's other files copied, the
    weights streamed tensor by tensor into ``model.safetensors`` (or HF shards past
    ``max_shard_bytes``), so memory stays near one tensor's merge whatever the model size."""
    for folder in (job.base, *job.models):
        if not any(folder.glob("*.safetensors")):
            raise ConfigError(f"{folder}: expected *.safetensors weights, found none")
    base = ShardedTensors(job.base)
    floats = _Float32(base)
    deltas = {}
    for i, folder in enumerate(job.models):
        tuned = ShardedTensors(folder)
        missing = sorted(set(floats) - set(tuned))
        if missing:
            raise MergeError(f"{folder}: expected the base's tensors, found {missing[:3]} missing")
        deltas[f"model{i:03d}"] = LazyDeltas(tuned, floats)
    layout = base.layout()
    out.mkdir(parents=True, exist_ok=True)
    merge_to_folder(
        floats,
        deltas,
        job.spec,
        out,
        dtypes={n: job.dtype or layout[n][1] for n in floats},
        keep={n: base[n] for n in base if n not in floats},
        metadata={"format": "pt"},
        max_shard_bytes=max_shard_bytes,
    )
    weights = (".safetensors", ".bin", INDEX)
    for item in job.base.iterdir():
        if item.is_file() and not item.name.endswith(weights):
            shutil.copy2(item, out / item.name)
