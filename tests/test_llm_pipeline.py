"""The whole pipeline on a tiny causal LM with LoRA: labelled tasks run as instructions, both
ownership units, and the merged adapter exported as a PEFT folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from clients.client_app import make_client_app
from medusa_fed.ownership import OwnershipMap
from medusa_fed.rundir.run_dir import RunDir
from medusa_fed.training import load_base
from medusa_fed.training.tiny_models import write_tiny_model
from simulations.inprocess_grid import InProcessGrid
from strategies.medusa_strategy import MedusaStrategy, model_spec


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "llama", "llama")


def _run(model: Path, tasks: dict[str, Path], out: Path, make_config, **overrides):  # type: ignore[no-untyped-def]
    cfg = make_config(
        model, out, **{"model-family": "causal-lm", "method": "lora", "max-length": 48,
                       "refit-epochs": 0, "compare": "ties"} | overrides,
    )  # fmt: skip
    configs = {
        i + 1: {"team": name, "task": str(path), "controlled": True}
        for i, (name, path) in enumerate(sorted(tasks.items()))
    }
    strategy = MedusaStrategy(cfg, load_base(model_spec(cfg)))
    return strategy.run(InProcessGrid(make_client_app(), configs)).report()


@pytest.mark.parametrize("unit", ["element", "lora-rank"])
def test_a_causal_lm_run_scores_instructions_and_exports_adapters(
    tiny_llama, tiny_tasks, tiny_run_config, tmp_path, unit
):  # type: ignore[no-untyped-def]
    # Execute
    report = _run(
        tiny_llama, tiny_tasks, tmp_path / "run", tiny_run_config, **{"ownership-unit": unit}
    )
    # Assert: every team scored by rank classification and exact match, before and merged
    run = RunDir(tmp_path / "run")
    entries = {e["name"]: e for e in report["teams"]}
    assert set(entries) == set(tiny_tasks)
    for team in tiny_tasks:
        metrics = entries[team]["metrics"]
        for key in ("accuracy", "exact_match"):
            assert 0.0 <= metrics["merged"]["medusa"][key] <= 1.0
            assert 0.0 <= metrics["merged"]["ties"][key] <= 1.0
        folder = run.path / "merged" / "medusa" / team
        assert (folder / "adapter_config.json").is_file()
    owners = OwnershipMap.load(run.file_path("ownership.safetensors"))
    for name, ids in owners.owners.items():
        if unit == "lora-rank" and name.endswith("lora_A.weight"):  # a row of A: one owner
            assert (ids == ids[:, :1]).all(), name
            partner = owners.owners[name.replace("lora_A", "lora_B")]
            assert torch.equal(partner[0, :], ids[:, 0]), name
    rows_with_one_owner = [
        bool((ids == ids[:, :1]).all())
        for n, ids in owners.owners.items()
        if n.endswith("lora_A.weight")
    ]
    assert all(rows_with_one_owner) == (unit == "lora-rank")
