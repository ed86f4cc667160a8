"""The team-site flow from the shell: probe -> assign -> masked fine-tune, for every method."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from medusa_fed.cli import app
from medusa_fed.masking import mask_from_ownership
from medusa_fed.training import export

runner = CliRunner()
TRAIN = ["--max-train", "60", "--max-test", "30", "--batch-size", "8", "--lr", "3e-3"]


def _ok(args: list[str]) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("method", ["full", "lora", "ia3"])
def test_probe_assign_masked_train_from_the_shell(tiny_bert, tiny_tasks, tmp_path, method):
    common = ["--model", str(tiny_bert), "--method", method]
    for team in ("alpha", "beta"):
        _ok(
            [
                "train",
                "--task",
                str(tiny_tasks[team]),
                "--probe",
                "--out",
                str(tmp_path / team),
                *common,
                *TRAIN,
            ]
        )
    ownership = tmp_path / "ownership.safetensors"
    out = _ok(
        [
            "assign",
            "--probe",
            f"alpha={tmp_path / 'alpha/probe.safetensors'}",
            "--probe",
            f"beta={tmp_path / 'beta/probe.safetensors'}",
            "--out",
            str(ownership),
            *common,
        ]
    )
    assert "alpha" in out and "beta" in out and ownership.is_file()
    out = _ok(
        [
            "train",
            "--task",
            str(tiny_tasks["alpha"]),
            "--ownership",
            str(ownership),
            "--team",
            "alpha",
            "--epochs",
            "2",
            "--out",
            str(tmp_path / "masked"),
            *common,
            *TRAIN,
        ]
    )
    assert "before" in out and "after" in out
    delta, meta = export.load_state(tmp_path / "masked/delta.safetensors")
    mask = mask_from_ownership(ownership, "alpha")
    assert mask is not None and meta["masked"] == "True"
    changed = 0
    for name, d in delta.items():
        assert torch.count_nonzero(d[~mask[name]]) == 0, name  # not owned: exactly the base
        changed += int(torch.count_nonzero(d[mask[name]]))
    assert changed > 0
    metrics = json.loads((tmp_path / "masked/metrics.json").read_text())
    assert metrics["masked"] is True and metrics["method"] == method


def test_assign_refuses_bad_probe_arguments(tiny_bert, tmp_path):
    result = runner.invoke(
        app,
        ["assign", "--probe", "alpha", "--probe", "b=x", "--out", str(tmp_path / "o.safetensors")],
    )
    assert result.exit_code == 2 and "TEAM=PATH" in result.output
    result = runner.invoke(
        app,
        [
            "assign",
            "--probe",
            f"a={tmp_path / 'none.safetensors'}",
            "--probe",
            f"b={tmp_path / 'none2.safetensors'}",
            "--model",
            str(tiny_bert),
            "--out",
            str(tmp_path / "o.st"),
        ],
    )
    assert result.exit_code == 2 and "expected a probe file, found none" in result.output
