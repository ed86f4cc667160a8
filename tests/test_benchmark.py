"""The quality benchmark end to end on a tiny BERT: it runs the coordinator's pipeline, caches the
branches it trains, and writes tables, JSON and plots."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from clients.client_app import make_client_app
from medusa_fed.rundir import RunDir
from medusa_fed.training import load_base
from simulations import bench_report
from simulations.benchmark import Bench, BenchConfig
from simulations.inprocess_grid import InProcessGrid
from simulations.variants import VARIANTS
from strategies.medusa_strategy import MedusaStrategy, model_spec

GRID = ("linear", "task_arithmetic:scale=0.5|1", "ties:density=0.5", "dare_ties:drop_rate=0.5")


def _config(tiny_bert, tasks, out: Path, **overrides) -> BenchConfig:  # type: ignore[no-untyped-def]
    raw = dict(
        teams=tasks,
        settings=(tasks,),
        model=str(tiny_bert),
        max_train=80,
        max_eval=30,
        epochs=3,
        probe_epochs=1,
        lr=3e-3,
        batch_size=8,
        max_length=16,
        grid=GRID,
        out=str(out),
    )
    return BenchConfig(**{**raw, **overrides})  # type: ignore[arg-type]


def test_benchmark_runs_every_method_and_writes_tables(
    tiny_bert, tiny_tasks, tmp_path, monkeypatch
):
    # Prepare
    from clients.team_site import TeamSite

    trained: list[tuple[str, str]] = []
    for kind in ("free", "probe"):
        real = getattr(TeamSite, kind)

        def spy(self, request, _real=real, _kind=kind):  # type: ignore[no-untyped-def]
            trained.append((_kind, f"{self.team.name}:{self.team.controlled}"))
            return _real(self, request)

        monkeypatch.setattr(TeamSite, kind, spy)
    tasks = tuple(str(tiny_tasks[n]) for n in ("alpha", "beta", "gamma"))
    variants = tuple(VARIANTS[v] for v in ("default", "paper", "uncontrolled", "scaled"))
    cfg = _config(tiny_bert, tasks, tmp_path / "bench", settings=(tasks[:2], tasks))
    cfg.variants = variants
    messages: list[str] = []
    # Execute
    bench = Bench(cfg, progress=messages.append)
    cells = bench.run()
    # Assert: per setting the ceiling, the floor, every compared merge and every variant
    methods = {c.method for c in cells}
    assert methods == {
        "alone",
        "floor (head only)",
        "linear",
        "task_arithmetic",
        "ties",
        "dare_ties",
        "fed-linear",
        "fed-ties",
        *(f"medusa:{v.name}" for v in variants),
    }
    assert len(cells) == 2 * len(methods)
    for c in cells:
        assert set(c.test) <= {"alpha", "beta", "gamma"} and len(c.test) in (2, 3)
        assert all(0.0 <= v <= 1.0 for v in c.test.values())
    tuned = [c for c in cells if c.method == "task_arithmetic"]
    assert all(c.grid_tried == 2 and c.params["scale"] in (0.5, 1.0) for c in tuned)
    assert all(not math.isnan(c.validation) for c in tuned)  # chosen on validation
    # score-validation: a merge without a grid is scored on validation too (to choose by)
    single = [c for c in cells if c.method in ("medusa:default", "linear", "ties")]
    assert len(single) == 6 and all(0.0 <= c.validation <= 1.0 for c in single)
    scaled = [c for c in cells if c.method == "medusa:scaled"]
    assert all(c.grid_tried == 4 and c.params["scale"] in (0.7, 1.0, 1.3, 1.6) for c in scaled)
    # every compared merge has the default's head re-fit, the paper recipe none
    assert all(c.params["refit_epochs"] == 1.0 for c in cells if c.method == "ties")
    assert all("refit_epochs" not in c.params for c in cells if c.method == "medusa:paper")
    # a probe and an unmasked branch are trained once per team site and replayed after (the last
    # team of a setting as an uncontrolled team is a site of its own: beta in the 2-team setting,
    # gamma in the 3-team one; the free branches are asked in each setting's first run only)
    frees = sorted(t for k, t in trained if k == "free")
    assert frees == ["alpha:True", "beta:True", "gamma:True"]
    probes = sorted(t for k, t in trained if k == "probe")
    assert probes == ["alpha:True", "beta:False", "beta:True", "gamma:False", "gamma:True"]
    assert bench.sites.hits > 0
    # the learnable tasks are learned alone
    alone = [c for c in cells if c.method == "alone"]
    assert min(v for c in alone for v in c.test.values()) >= 0.75
    path = bench_report.write(tmp_path, cells, cfg, wall_s=12.0)
    text = path.read_text()
    assert "## 3 teams: alpha, beta, gamma" in text and "| medusa:paper |" in text
    data = json.loads((tmp_path / "results.json").read_text())
    assert len(data["cells"]) == len(cells)
    assert (tmp_path / "accuracy.png").stat().st_size > 1000
    norm = bench_report.summarize(cells)["alpha+beta+gamma"]["alone"]["norm"]
    assert math.isclose(norm[0], 1.0)
    # runs made apart (one seed each) combine into one report with spreads over seeds
    again = [dataclasses.replace(c, seed=1) for c in cells]
    bench_report.write(tmp_path / "s1", again, dataclasses.replace(cfg, seeds=(1,)), wall_s=3.0)
    both = bench_report.combine([tmp_path, tmp_path / "s1"], tmp_path / "all")
    pooled, pooled_cfg, wall = bench_report.read(tmp_path / "all")
    assert len(pooled) == 2 * len(cells) and pooled_cfg.seeds == (0, 1) and wall == 15.0
    assert "seeds [0, 1]" in both.read_text()
    with pytest.raises(ValueError, match="max_train"):
        bad = dataclasses.replace(cfg, max_train=81)
        bench_report.write(tmp_path / "bad", again, bad, wall_s=1.0)
        bench_report.combine([tmp_path, tmp_path / "bad"], tmp_path / "none")
    with pytest.raises(ValueError, match="come from more than one run"):
        bench_report.combine([tmp_path, tmp_path], tmp_path / "twice")


def test_coordinator_and_benchmark_give_the_same_merge_bit_for_bit(tiny_bert, tiny_tasks, tmp_path):
    """The benchmark is the coordinator's pipeline: the same config and seed through Flower
    messages (ServerApp strategy + ClientApp) and through the benchmark's cached in-process sites
    store the same merged tensors, every method."""
    # Prepare
    tasks = tuple(str(tiny_tasks[n]) for n in ("alpha", "beta", "gamma"))
    cfg = _config(tiny_bert, tasks, tmp_path / "bench", keep_runs=True, seeds=(3,))
    variant = VARIANTS["default"]
    run_config = cfg.run_config(3, variant, tmp_path / "coordinator", compare=True)
    nodes = {i + 1: {"team": Path(t).stem, "task": t} for i, t in enumerate(tasks)}
    # Execute
    MedusaStrategy(run_config, load_base(model_spec(run_config))).run(
        InProcessGrid(make_client_app(), nodes)
    )
    Bench(cfg).run()
    # Assert
    coordinator = RunDir(tmp_path / "coordinator", readonly=True)
    bench = RunDir(tmp_path / "bench/runs/alpha+beta+gamma-s3-default", readonly=True)
    labels = [p for p in coordinator.list("merged/") if p.endswith("/shared.safetensors")]
    assert len(labels) == 1 + len(GRID) + len(cfg.federated)
    for rel in labels:
        a, meta_a = coordinator.read_tensors(rel)
        b, meta_b = bench.read_tensors(rel)
        assert meta_a == meta_b, rel  # the same method and chosen settings
        assert a.keys() == b.keys()
        assert all(torch.equal(a[n], b[n]) for n in a), rel


def test_bench_modes_settings_and_variants():
    import typer

    from medusa_fed.cli.bench import bench_config

    quick = bench_config("quick", "full", "", "")
    assert [v.name for v in quick.variants] == ["default"]
    assert quick.settings == (("movie", "tweet", "bbc"), ("movie", "tweet", "bbc", "spam"))
    full = bench_config("full", "lora", "", "")
    sizes = [len(s) for s in full.settings]
    assert sizes == [2] * 6 + [3] * 4 + [4] and len(set(full.settings)) == 11
    assert full.method == "lora" and full.seeds == (0, 1, 2)
    assert quick.lr == 1e-4 and full.lr == 1e-3  # adapters train at their own default lr
    assert {v.name for v in full.variants} == set(VARIANTS)
    standard = bench_config("standard", "full", "", "")
    assert standard.settings == quick.settings and standard.seeds == (0, 1, 2)
    assert standard.max_train * standard.epochs >= 4 * quick.max_train * quick.epochs
    assert standard.max_eval > quick.max_eval and "tsv_m:scale=0.5|1|1.5|2" in standard.grid
    assert len(standard.grid) == len(quick.grid)  # the same methods, wider lambda grids
    chosen = bench_config("quick", "full", "3,4", "paper,rounds4")
    assert chosen.seeds == (3, 4) and [v.name for v in chosen.variants] == ["paper", "rounds4"]
    with pytest.raises(typer.BadParameter, match="expected quick, standard, full, found 'fast'"):
        bench_config("fast", "full", "", "")
    with pytest.raises(typer.BadParameter, match="expected full, lora or ia3, found 'qlora'"):
        bench_config("quick", "qlora", "", "")
    with pytest.raises(typer.BadParameter, match=r"unknown \['rounds9'\]"):
        bench_config("quick", "full", "", "rounds9")
    with pytest.raises(typer.BadParameter, match="non-negative integers, found '0,a'"):
        bench_config("quick", "full", "0,a", "")
    with pytest.raises(typer.BadParameter, match="non-negative integers, found '²'"):
        bench_config("quick", "full", "²", "")  # a digit to str.isdigit, not to int()
    tuned = bench_config("standard", "full", "", "", lr=3e-4, epochs=8.0, max_train=1024)
    assert (tuned.lr, tuned.epochs, tuned.max_train) == (3e-4, 8.0, 1024)
    assert tuned.grid == standard.grid and tuned.max_eval == standard.max_eval
    with pytest.raises(typer.BadParameter, match="--lr: expected a finite number > 0, found nan"):
        bench_config("quick", "full", "", "", lr=float("nan"))
    four = bench_config("standard", "full", "", "", team_counts="4")
    assert four.settings == (("movie", "tweet", "bbc", "spam"),) and four.seeds == (0, 1, 2)
    assert [len(s) for s in bench_config("full", "full", "", "", team_counts="2,4").settings] == [
        2
    ] * 6 + [4]
    for bad in ("5", "x", "3,"):
        with pytest.raises(typer.BadParameter, match=r"among the mode's settings \(3, 4\)"):
            bench_config("quick", "full", "", "", team_counts=bad)


def test_bench_llm_budget_is_its_own():
    import typer

    from medusa_fed.cli.bench import LLM_BUDGET, LLM_TEAMS, bench_config

    # Execute: no model is loaded to build a config
    lora = bench_config("quick", "lora", "", "default,lora-rank", model="smollm2-135m-instruct")
    ia3 = bench_config("quick", "ia3", "", "", model="SmolLM2-135M-Instruct")
    # Assert: one 3-team setting, 2 seeds, the LLM grid and each adapter's own budget
    assert lora.settings == (LLM_TEAMS,) and lora.seeds == (0, 1)
    assert (lora.max_train, lora.epochs, lora.lr) == LLM_BUDGET["lora"] == (64, 5.0, 3e-3)
    assert (ia3.max_train, ia3.epochs, ia3.lr) == LLM_BUDGET["ia3"] == (64, 5.0, 3e-2)
    assert ia3.method == "ia3" and (lora.max_eval, lora.max_length) == (32, 96)
    assert [v.name for v in lora.variants] == ["default", "lora-rank"]
    assert len(lora.grid) < len(bench_config("quick", "lora", "", "").grid)
    with pytest.raises(typer.BadParameter, match="expected quick for the causal LM"):
        bench_config("standard", "lora", "", "", model="smollm2-135m-instruct")


@pytest.mark.parametrize("method", ["lora", "ia3"])
def test_benchmark_runs_on_adapters(tiny_bert, tiny_tasks, method, tmp_path):
    tasks = tuple(str(tiny_tasks[n]) for n in ("alpha", "beta"))
    cfg = _config(
        tiny_bert,
        tasks,
        tmp_path,
        method=method,
        max_train=32,
        max_eval=16,
        epochs=2,
        lr=1e-2,
        grid=("ties:density=0.5",),
        federated=(),
        floor=False,
    )
    cells = Bench(cfg).run()
    assert [c.method for c in cells] == ["medusa:default", "alone", "ties"]
    assert all(0.0 <= v <= 1.0 for c in cells for v in c.test.values())


def test_medusa_only_adds_a_variant_to_earlier_runs(tiny_bert, tiny_tasks, tmp_path):
    tasks = tuple(str(tiny_tasks[n]) for n in ("alpha", "beta"))
    cfg = _config(tiny_bert, tasks, tmp_path / "b", max_train=16, max_eval=8, epochs=2)
    cfg.medusa_only, cfg.variants = True, (VARIANTS["rounds1"],)
    cells = Bench(cfg).run()
    assert [c.method for c in cells] == ["medusa:rounds1"]
    assert cells[0].params["rounds"] == 1
    earlier = [dataclasses.replace(cells[0], method="alone", params={})]
    bench_report.write(
        tmp_path / "earlier", earlier, dataclasses.replace(cfg, medusa_only=False), 1.0
    )
    bench_report.write(tmp_path / "more", cells, cfg, 2.0)
    bench_report.combine([tmp_path / "earlier", tmp_path / "more"], tmp_path / "all")
    pooled, _, _ = bench_report.read(tmp_path / "all")
    assert sorted(c.method for c in pooled) == ["alone", "medusa:rounds1"]


def test_convergence_check_trains_each_task_alone_at_b_and_2b(tiny_bert, tiny_tasks, tmp_path):
    # Prepare
    from simulations.bench_convergence import alone_validation, check_convergence, report

    tasks = tuple(str(tiny_tasks[n]) for n in ("alpha", "beta"))
    cfg = _config(tiny_bert, tasks, tmp_path, max_train=32, max_eval=16, epochs=2)
    messages: list[str] = []
    # Execute
    rows = check_convergence(cfg, progress=messages.append)
    # Assert: one row per task and seed, scored on validation at 1 and 2 epochs
    assert [(r.task, r.seed, r.epochs, r.factor) for r in rows] == [
        ("alpha", 0, 2, 2.0),
        ("beta", 0, 2, 2.0),
    ]
    assert len(messages) == 4 and messages[1] == "alpha seed 0: alone for 4 epochs"
    assert all(0.0 <= a <= 1.0 for r in rows for a in (r.at_budget, r.at_more))
    assert rows[0].moved == rows[0].at_more - rows[0].at_budget
    # the same training as a lone call at B (seeded: the check is reproducible)
    assert alone_validation(cfg, tasks[0], 0, 2.0) == rows[0].at_budget
    text = report(rows)
    assert "| alpha | 0 |" in text and "val @ 4 ep" in text


def test_convergence_report_names_the_tasks_that_still_move():
    from simulations.bench_convergence import Convergence, report

    rows = [
        Convergence("movie", 0, 4.0, 2.0, 0.700, 0.706),  # +0.6 point
        Convergence("movie", 1, 4.0, 2.0, 0.700, 0.700),
        Convergence("bbc", 0, 4.0, 2.0, 0.800, 0.830),  # +3 points
    ]
    text = report(rows)
    assert "NOT converged" in text and text.rstrip().endswith("bbc")
    assert "movie +0.3, bbc +3.0" in text
    assert "converged: every task" in report(rows[:2])


def test_bench_refuses_an_unknown_federated_anchor_before_any_run(tmp_path):
    from typer.testing import CliRunner

    from medusa_fed.cli import app

    # Execute: nothing is loaded or trained before the run configs are checked
    result = CliRunner().invoke(
        app, ["bench", "--federated", "fedprox", "--out", str(tmp_path / "b")]
    )
    # Assert
    assert result.exit_code == 2
    assert "unknown merge method 'fedprox'" in result.output
    assert not (tmp_path / "b").exists()


def test_results_say_how_far_each_team_alone_rises_above_the_floor():
    # Prepare: two seeds of alone and untuned cells on one setting, and a medusa-only setting
    from simulations.benchmark import BenchConfig, Cell

    def cell(method: str, seed: int, tweet: float, spam: float, setting="tweet+spam") -> Cell:
        return Cell(setting, seed, method, {}, math.nan, {"tweet": tweet, "spam": spam}, 1.0)

    cells = [
        cell("alone", 0, 0.625, 0.90),
        cell("untuned", 0, 0.4375, 0.78),
        cell("alone", 1, 0.5625, 0.94),
        cell("untuned", 1, 0.4375, 0.78),
        cell("medusa:default", 0, 0.5, 0.85, setting="tweet+bbc"),
    ]
    # Execute
    gains = bench_report.alone_gains(cells, "tweet+spam")
    text = bench_report.markdown(cells, BenchConfig(), 60.0)
    # Assert: per-seed differences, summarised as mean ± std in the setting's section
    assert gains is not None and gains[0] == "untuned"
    assert gains[1]["tweet"] == pytest.approx([0.1875, 0.125])
    assert gains[1]["spam"] == pytest.approx([0.12, 0.16])
    assert "Each team alone over the `untuned` row" in text and "tweet 15.6 ± 4.4" in text
    assert bench_report.alone_gains(cells, "tweet+bbc") is None  # no alone, no floor
    # a team left out of one seed's floor run is left out of the line, not a KeyError
    del cells[3].test["spam"]
    assert list(bench_report.alone_gains(cells, "tweet+spam")[1]) == ["tweet"]
    assert text.count("Each team alone over") == 1
