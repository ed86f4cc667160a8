"""The lacking down-link end to end on a tiny BERT, over real Flower messages (InProcessGrid with
the real ClientApp): the same merged weights and report numbers as the dense send, bit for bit,
for fewer bytes; a site that lost what it kept, or kept other values, gets the dense weights and
nothing else changes; a malformed payload is refused in one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from clients.client_app import make_client_app
from clients.team_site import TeamSite
from medusa_fed import codec
from medusa_fed.codec.downlink import encode_lacking
from medusa_fed.codec.records import arrays_from_record, record_from_arrays
from medusa_fed.errors import PayloadError
from medusa_fed.protocol import ARRAYS_KEY, LACK_KEY, MSG_EVAL, MSG_TRAIN, START_KEY, TrainRequest
from medusa_fed.rundir.run_dir import RunDir
from medusa_fed.team_config import TeamConfig
from medusa_fed.training import load_base
from simulations.inprocess_grid import InProcessGrid
from strategies.medusa_strategy import MedusaStrategy, model_spec

# two rounds from a warm start: both rounds' starts and the Medusa EVAL go through the down-link
ROUNDS = {"epochs": 3, "rounds": 2, "warm-start": True, "compare": "ties", "store": "off"}


def _run(tiny_bert, tiny_tasks, tiny_run_config, out: Path, tamper=None, **overrides):  # type: ignore[no-untyped-def]
    configs = {
        i + 1: {"team": name, "task": str(path), "controlled": True}
        for i, (name, path) in enumerate(sorted(tiny_tasks.items()))
    }
    grid = InProcessGrid(make_client_app(), configs, tamper=tamper)
    cfg = tiny_run_config(tiny_bert, out, **(ROUNDS | overrides))
    strategy = MedusaStrategy(cfg, load_base(model_spec(cfg)))
    return strategy.run(grid).report(), grid


def _merged(out: Path, label: str) -> dict[str, torch.Tensor]:
    return RunDir(out, readonly=True).read_tensors(f"merged/{label}/shared.safetensors")[0]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        torch.equal(a[n].view(torch.int32), b[n].view(torch.int32)) for n in a
    )


@pytest.fixture(scope="module")
def dense_run(tiny_bert, tiny_tasks, tiny_run_config, tmp_path_factory):  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("dense") / "run"
    report, _ = _run(tiny_bert, tiny_tasks, tiny_run_config, out, downlink="dense")
    return report, out


def test_lacking_gives_the_dense_sends_results_bit_for_bit_for_fewer_bytes(
    dense_run, tiny_bert, tiny_tasks, tiny_run_config, tmp_path
):
    # Execute
    report, grid = _run(tiny_bert, tiny_tasks, tiny_run_config, tmp_path / "run")
    # Assert: the starts and Medusa's merge went as the values each team lacks, never dense
    trains = [m for m in grid.sent if m.metadata.message_type == MSG_TRAIN]
    assert len(trains) == 6 and all(START_KEY not in m.content for m in trains)
    assert all(LACK_KEY in m.content for m in trains)
    evals = [m for m in grid.sent if m.metadata.message_type == MSG_EVAL]
    medusa = [m for m in evals if dict(m.content["config"])["method-label"] == "medusa"]
    assert len(medusa) == 3 and all(LACK_KEY in m.content for m in medusa)
    # the same merged weights and report numbers as the dense send
    dense_report, dense_out = dense_run
    for label in ("medusa", "ties"):
        assert _same(_merged(tmp_path / "run", label), _merged(dense_out, label)), label
    assert [t["metrics"] for t in report["teams"]] == [t["metrics"] for t in dense_report["teams"]]
    # fewer bytes: a round costs the mask plus the other teams' owned values
    for team, stages in report["bytes"].items():
        for stage in ("train-round1", "train-round2"):
            ratio = stages[stage]["sent"] / stages[stage]["dense_fp32"]
            dense_ratio = dense_report["bytes"][team][stage]["sent"] / stages[stage]["dense_fp32"]
            share = next(t["owned_share"] for t in report["teams"] if t["name"] == team)
            assert dense_ratio == pytest.approx(1 + 1 / 32, abs=1e-3)
            assert ratio == pytest.approx(1 / 32 + (1 - share), abs=0.01), (team, stage)


def test_a_site_that_lost_or_changed_what_it_kept_gets_the_dense_weights(
    dense_run, tiny_bert, tiny_tasks, tiny_run_config, tmp_path
):
    # Prepare: after round 1, node 1 loses its own total (a restart) and node 2's is altered
    def tamper(node, request, reply):  # type: ignore[no-untyped-def]
        config = dict(request.content["config"])
        if request.metadata.message_type == MSG_TRAIN and config["round"] == 1:
            state = grid.contexts[node].state
            kept = [k for k in state if k.startswith("medusa-own-")]
            if node == 1:
                for key in kept:
                    del state[key]
            if node == 2:
                arrays = dict(arrays_from_record(state[kept[0]]))
                first = next(iter(arrays))
                arrays[first] = arrays[first] + np.float32(1e-3)
                state[kept[0]] = record_from_arrays(arrays)
        return [reply]

    grid: InProcessGrid
    configs = {
        i + 1: {"team": name, "task": str(path), "controlled": True}
        for i, (name, path) in enumerate(sorted(tiny_tasks.items()))
    }
    grid = InProcessGrid(make_client_app(), configs, tamper=tamper)
    cfg = tiny_run_config(tiny_bert, tmp_path / "run", **ROUNDS)
    # Execute
    report = MedusaStrategy(cfg, load_base(model_spec(cfg))).run(grid).report()
    # Assert: nodes 1 and 2 were asked round 2 twice (light, then dense), node 3 once
    round2 = [
        m.metadata.dst_node_id
        for m in grid.sent
        if m.metadata.message_type == MSG_TRAIN and dict(m.content["config"])["round"] == 2
    ]
    assert sorted(round2) == [1, 1, 2, 2, 3]
    dense = [m for m in grid.sent if START_KEY in m.content]
    assert sorted(m.metadata.dst_node_id for m in dense) == [1, 2]
    # nothing else changed: no team left out, the dense send's weights and numbers
    dense_report, dense_out = dense_run
    assert all(t["status"] == "ok" for t in report["teams"])
    assert _same(_merged(tmp_path / "run", "medusa"), _merged(dense_out, "medusa"))
    assert [t["metrics"] for t in report["teams"]] == [t["metrics"] for t in dense_report["teams"]]


def test_fp16_down_link_halves_the_bytes_and_still_merges(
    dense_run, tiny_bert, tiny_tasks, tiny_run_config, tmp_path
):
    report, _ = _run(
        tiny_bert, tiny_tasks, tiny_run_config, tmp_path / "run", **{"downlink-dtype": "fp16"}
    )
    merged, dense = _merged(tmp_path / "run", "medusa"), _merged(dense_run[1], "medusa")
    assert not _same(merged, dense)  # lossy: the teams started from rounded values
    assert max(float((merged[n] - dense[n]).abs().max()) for n in merged) < 0.05
    for team, stages in report["bytes"].items():
        share = next(t["owned_share"] for t in report["teams"] if t["name"] == team)
        ratio = stages["train-round2"]["sent"] / stages["train-round2"]["dense_fp32"]
        assert ratio == pytest.approx(1 / 32 + (1 - share) / 2, abs=0.01), team
    assert all(t["status"] == "ok" for t in report["teams"])


def test_a_malformed_lacking_payload_is_refused_in_one_line(tiny_bert, tiny_tasks, tiny_run_config):
    # Prepare: a site that kept its own total, sent a truncated and a NaN payload
    cfg = tiny_run_config(tiny_bert, Path("unused"))
    site = TeamSite(TeamConfig(name="alpha", task=str(tiny_tasks["alpha"])))
    base = load_base(model_spec(cfg))
    shapes = base.shapes
    mask = {n: torch.zeros(s, dtype=torch.bool) for n, s in shapes.items()}
    first = next(iter(shapes))
    mask[first].view(-1)[:3] = True
    own = {n: torch.zeros(int(m.sum())) for n, m in mask.items()}
    site.state["medusa-own-train-round1"] = record_from_arrays(  # type: ignore[index]
        {f"{n}::owned": v.numpy() for n, v in own.items()}
    )
    zeros = {n: torch.zeros(s) for n, s in shapes.items()}
    lack = encode_lacking(base.shared_state(), base.shared_state(), mask, zeros)
    settings = _settings(cfg)

    def request(payload):  # type: ignore[no-untyped-def]
        return TrainRequest(
            settings,
            2,
            2,
            "train",
            "train-round1",
            1.0,
            1.0,
            0,
            "train-round1",
            "f" * 64,
            "fp32",
            mask=codec.encode_mask(mask),
            lack=payload,
        )

    truncated = {**lack, f"{first}::lack": lack[f"{first}::lack"][:-1]}
    nan = {k: v.copy() for k, v in lack.items()}
    nan[f"{first}::lack"][0] = np.nan
    # Execute / Assert
    for payload, message in ((truncated, "truncated"), (nan, "expected finite values")):
        with pytest.raises(PayloadError, match=message) as info:
            site.handle(request(payload))
        assert "\n" not in str(info.value)


def _settings(cfg):  # type: ignore[no-untyped-def]
    from medusa_fed.protocol import Settings

    return Settings(cfg.model, cfg.model_family, cfg.method, 1.0, 0, 0.0, 8, 16, 40, 20, 0, False)


def test_a_merge_the_team_scored_already_is_not_sent_again(
    tiny_bert, tiny_tasks, tiny_run_config, tmp_path
):
    # Prepare: a grid of two identical candidates (one merge), chosen on validation, then tested;
    # in the second run every site forgets what it held after its first EVAL (a restart)
    from clients import downlink

    label = "ties:density=0.5|0.5"
    one_shot = {"rounds": 1, "warm-start": False, "compare": label}

    def forget(node, request, reply):  # type: ignore[no-untyped-def]
        downlink._HELD.clear()
        return [reply]

    # Execute
    reports, grids = [], []
    for i, (mode, tamper) in enumerate((("dense", None), ("lacking", None), ("lacking", forget))):
        report, grid = _run(
            tiny_bert,
            tiny_tasks,
            tiny_run_config,
            tmp_path / str(i),
            tamper,
            downlink=mode,
            **one_shot,
        )
        reports.append(report)
        grids.append(grid)

    # Assert: with lacking, only the first validation exchange carried the weights
    def evals(grid):  # type: ignore[no-untyped-def]
        return [
            m
            for m in grid.sent
            if m.metadata.message_type == MSG_EVAL
            and dict(m.content["config"])["method-label"] == label
        ]

    assert [ARRAYS_KEY in m.content for m in evals(grids[0])] == [True] * 9
    assert [ARRAYS_KEY in m.content for m in evals(grids[1])] == [True] * 3 + [False] * 6
    assert not any(LACK_KEY in m.content for m in evals(grids[1]))
    # sites that forgot: the next exchange asks light, then sends the weights to all three; the
    # coordinator then sends them the weights at once
    expected = [True] * 3 + [False] * 3 + [True] * 3 + [True] * 3
    assert [ARRAYS_KEY in m.content for m in evals(grids[2])] == expected
    for report in reports[1:]:
        assert [t["metrics"] for t in report["teams"]] == [
            t["metrics"] for t in reports[0]["teams"]
        ]
        assert all(t["status"] == "ok" for t in report["teams"])
    for team, stages in reports[1]["bytes"].items():  # the test exchange sent nothing heavy
        assert stages["eval"]["sent"] < reports[0]["bytes"][team]["eval"]["sent"]
