"""The whole pipeline on a tiny causal LM with LoRA: labelled tasks run as instructions, both
ownership units, the merged adapter exported as a PEFT folder, and teams' own instruction files
(chat messages, prompt/completion)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from clients.client_app import make_client_app
from medusa_fed.ownership import OwnershipMap
from medusa_fed.report import render_table
from medusa_fed.rundir.run_dir import RunDir
from medusa_fed.training import load_base
from medusa_fed.training.tiny_models import WORDS, write_tiny_model
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


def _instruction_files(root: Path) -> dict[str, Path]:
    """A chat-messages file whose answers are a closed set (a label word from cue words) and a
    prompt/completion file with free-form answers (the prompt's first two words)."""
    rng = random.Random(0)
    chat, free = [], []
    for i in range(120):
        cue = ("good", "great", "love") if i % 2 else ("bad", "awful", "hate")
        words = [rng.choice(cue) for _ in range(3)] + [rng.choice(WORDS) for _ in range(3)]
        rng.shuffle(words)
        turns = [
            {"role": "system", "content": "the film"},
            {"role": "user", "content": " ".join(words)},
            {"role": "assistant", "content": "happy" if i % 2 else "sad"},
        ]
        chat.append({"messages": turns})
        words = [rng.choice(WORDS) for _ in range(5)]
        free.append({"prompt": " ".join(words), "completion": " ".join(words[:2])})
    paths = {"chat": root / "chat.jsonl", "free": root / "free.jsonl"}
    for name, rows in (("chat", chat), ("free", free)):
        paths[name].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return paths


def test_teams_bring_their_own_instruction_files(tiny_llama, tiny_run_config, tmp_path):  # type: ignore[no-untyped-def]
    # Prepare: one team brings chat messages, the other prompt/completion rows
    tasks = _instruction_files(tmp_path)
    # Execute
    report = _run(tiny_llama, tasks, tmp_path / "run", tiny_run_config)
    # Assert: the closed answer set is ranked, free-form answers are scored as generated text
    entries = {e["name"]: e for e in report["teams"]}
    assert {name: e["status"] for name, e in entries.items()} == {"chat": "ok", "free": "ok"}
    for phase in ("before", "alone"):
        assert {"accuracy", "exact_match", "loss"} <= set(entries["chat"]["metrics"][phase])
    for method in ("medusa", "ties"):
        chat = entries["chat"]["metrics"]["merged"][method]
        free = entries["free"]["metrics"]["merged"][method]
        assert 0.0 <= chat["accuracy"] <= 1.0 and 0.0 <= chat["exact_match"] <= 1.0
        assert "accuracy" not in free
        assert {"exact_match", "token_f1", "loss", "perplexity"} <= set(free)
        assert free["perplexity"] >= 1.0
    run = RunDir(tmp_path / "run")
    for team in tasks:
        assert (run.path / "merged" / "medusa" / team / "adapter_config.json").is_file()
        hello = json.loads((run.path / "hello" / f"{team}.json").read_text())
        assert "happy" not in json.dumps(hello)  # no answer leaves a site
    table = render_table(report)
    assert "accuracy (%) per team" in table and "exact_match (%) per team" in table


def test_the_llm_budget_sweep_scores_validation_only(tiny_llama, tiny_tasks, tmp_path, capsys):  # type: ignore[no-untyped-def]
    from simulations.llm_budget import main

    # Execute: one task, two budgets
    out = tmp_path / "budget.json"
    main(
        [
            "--model", str(tiny_llama), "--tasks", str(tiny_tasks["alpha"]), "--lrs", "1e-3,3e-3",
            "--epochs", "1", "--max-train", "16", "--max-validation", "8", "--max-length", "48",
            "--out", str(out),
        ]
    )  # fmt: skip
    # Assert: a before score and one after score per budget, in the JSON and the table
    rows = json.loads(out.read_text())["rows"]
    assert [r["task"] for r in rows] == [str(tiny_tasks["alpha"])]
    assert set(rows[0]["after"]) == {"lr 0.001, 1 ep", "lr 0.003, 1 ep"}
    assert 0.0 <= rows[0]["before"]["accuracy"] <= 1.0
    table = capsys.readouterr().out
    assert "| task | before | lr 0.001, 1 ep | lr 0.003, 1 ep |" in table
