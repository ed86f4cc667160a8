"""The quality benchmark end to end on a tiny BERT: every method's cell, tables, JSON and plots."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from medusa_fed.simulations import bench_report
from medusa_fed.simulations.benchmark import Bench, BenchConfig
from medusa_fed.simulations.variants import VARIANTS

from medusa_fed.merging.rounds import owned_probe
from medusa_fed.ownership import assign_ownership


def test_benchmark_runs_every_method_and_writes_tables(tiny_bert, tiny_tasks, tmp_path):
    tasks = tuple(str(tiny_tasks[n]) for n in ("alpha", "beta", "gamma"))
    cfg = BenchConfig(
        teams=tasks,
        settings=(tasks[:2], tasks),
        model=str(tiny_bert),
        max_train=80,
        max_validation=20,
        max_test=30,
        epochs=3,
        probe_epochs=1,
        lr=3e-3,
        batch_size=8,
        max_length=16,
        grid={
            "linear": [{}],
            "task_arithmetic": [{"scale": 0.5}, {"scale": 1.0}],
            "ties": [{"density": 0.5, "scale": 1.0}],
            "dare_ties": [{"drop_rate": 0.5}],
        },
        variants=(
            VARIANTS["proportional"],
            VARIANTS["uncontrolled"],
            VARIANTS["rounds2"],
            VARIANTS["frozen"],
            VARIANTS["scaled"],
            VARIANTS["rounds2-refit"],
        ),
    )
    messages: list[str] = []
    cells = Bench(cfg, progress=messages.append).run()
    methods = {c.method for c in cells}
    # the refit variant brings the best baseline with the same head re-fit
    for setting in {c.setting for c in cells}:
        refit = [c for c in cells if c.setting == setting and c.method.endswith("+refit")]
        assert len(refit) == 1 and refit[0].method == "best post-hoc+refit"
        assert refit[0].params["merge"] in cfg.grid
    for c in cells:
        if c.method.endswith("refit"):
            assert c.params["refit_epochs"] == 1.0
    methods = {m for m in methods if not m.endswith("+refit")}
    assert methods == {
        "alone",
        "floor (head only)",
        "linear",
        "task_arithmetic",
        "ties",
        "dare_ties",
        "medusa:proportional",
        "medusa:uncontrolled",
        "medusa:rounds2",
        "medusa:frozen",
        "medusa:scaled",
        "medusa:rounds2-refit",
    }
    assert len(cells) == 2 * (len(methods) + 1)  # + one baseline re-fit per setting
    for c in cells:
        assert set(c.test) <= {"alpha", "beta", "gamma"} and len(c.test) in (2, 3)
        assert all(0.0 <= v <= 1.0 for v in c.test.values())
    tuned = [c for c in cells if c.method == "task_arithmetic"]
    assert all(c.grid_tried == 2 and c.params["scale"] in (0.5, 1.0) for c in tuned)
    scaled = [c for c in cells if c.method == "medusa:scaled"]
    assert all(c.grid_tried == 4 and c.params["scale"] in VARIANTS["scaled"].scales for c in scaled)
    # branches are trained once and reused: one unmasked fine-tune and one probe per team
    assert sum("unmasked" in m for m in messages) == 3
    assert sum(m.startswith("probe") for m in messages) == 3
    # the learnable tasks are learned alone
    alone = [c for c in cells if c.method == "alone"]
    assert min(v for c in alone for v in c.test.values()) >= 0.75
    path = bench_report.write(tmp_path, cells, cfg, wall_s=12.0)
    text = path.read_text()
    assert "## 3 teams: alpha, beta, gamma" in text and "| medusa:rounds2 |" in text
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


def _two_teams(tiny_bert, tiny_tasks, **overrides) -> BenchConfig:  # type: ignore[no-untyped-def]
    """A one-setting benchmark of teams alpha and beta on the tiny BERT (seconds)."""
    tasks = tuple(str(tiny_tasks[n]) for n in ("alpha", "beta"))
    raw = dict(
        teams=tasks,
        settings=(tasks,),
        model=str(tiny_bert),
        max_train=16,
        max_validation=8,
        max_test=8,
        epochs=1,
        probe_epochs=1,
        lr=1e-3,
        batch_size=8,
        max_length=16,
        floor=False,
    )
    return BenchConfig(**{**raw, **overrides})  # type: ignore[arg-type]


def test_variant_lr_scale_reaches_branch_training_only(tiny_bert, tiny_tasks, monkeypatch):
    from medusa_fed.simulations import benchmark

    cfg = _two_teams(tiny_bert, tiny_tasks)
    tasks = cfg.teams
    seen: list[tuple[str, float]] = []
    for name in ("finetune", "probe"):
        real = getattr(benchmark, name)

        def spy(*args, _real=real, _name=name, **kwargs):  # type: ignore[no-untyped-def]
            seen.append((_name, args[2].lr))
            return _real(*args, **kwargs)

        monkeypatch.setattr(benchmark, name, spy)
    variant = dataclasses.replace(VARIANTS["rounds4-refit-lr2"], rounds=2, refit_epochs=0.0)
    Bench(cfg).medusa_cell(tasks, "alpha+beta", 0, variant)
    assert sorted(seen) == [("finetune", 2e-3)] * 4 + [("probe", 1e-3)] * 2


def test_variant_masked_lr_scale_reaches_masked_shared_tensors_only(
    tiny_bert, tiny_tasks, monkeypatch
):
    from medusa_fed.simulations import benchmark

    cfg = _two_teams(tiny_bert, tiny_tasks, epochs=2)  # a warm start trains epochs - probe
    seen: list[tuple[bool, float, float | None, float]] = []  # masked, lr, head lr, shared scale
    real = benchmark.finetune

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        c = args[2]
        seen.append((kwargs.get("mask") is not None, c.lr, c.head_lr, c.shared_lr_scale))
        return real(*args, **kwargs)

    monkeypatch.setattr(benchmark, "finetune", spy)
    variant = dataclasses.replace(
        VARIANTS["warm-rounds2-refit-mlr3"], refit_epochs=0.0, uncontrolled_last=True
    )
    Bench(cfg).medusa_cell(cfg.teams, "alpha+beta", 0, variant)
    # two rounds; the setting's last team is uncontrolled: unmasked, at the plain lr
    assert sorted(seen) == [(False, 1e-3, 1e-3, 1.0)] * 2 + [(True, 1e-3, 1e-3, 3.0)] * 2


def test_isolated_variant_trains_and_scores_each_team_on_its_own_branch(
    tiny_bert, tiny_tasks, monkeypatch
):
    from medusa_fed.simulations import benchmark

    cfg = _two_teams(tiny_bert, tiny_tasks, epochs=2)
    starts: list[tuple[str, dict]] = []
    real = benchmark.finetune

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        starts.append((kwargs["desc"], kwargs["start"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(benchmark, "finetune", spy)
    bench = Bench(cfg)
    variant = VARIANTS["warm-rounds2-refit-isolated"]
    cell = bench.medusa_cell(cfg.teams, "alpha+beta", 0, variant)
    # every round starts from base + the team's OWN branch: round 1 its owned probe values
    base = bench.base_state
    probes = {t: bench.probe(t, 0, variant.density) for t in cfg.teams}
    ownership = assign_ownership(
        {t: p.sparse for t, p in probes.items()},
        bench.shapes,
        {t: True for t in cfg.teams},
        seed=0,
    )
    assert [d.split()[1] for d, _ in starts] == list(cfg.teams) * 2
    for (desc, start), team in zip(starts[:2], cfg.teams, strict=True):
        own = owned_probe(probes[team].sparse, ownership.mask(team))
        for n, b in base.items():
            assert torch.equal(start[n], b + own[n]), (desc, n)
    for (desc, start), team in zip(starts[2:], cfg.teams, strict=True):
        (other,) = (t for t in cfg.teams if t != team)
        theirs = ownership.mask(other)
        for n, b in base.items():  # round 2: the other team's elements still at the base
            assert torch.equal(start[n][theirs[n]], b[theirs[n]]), (desc, n)
    assert set(cell.test) == {benchmark.label(t) for t in cfg.teams}
    assert cell.params["isolated"] is True and cell.method == variant.name


def test_bench_modes_settings_and_variants():
    import typer

    from medusa_fed.cli.bench import bench_config

    quick = bench_config("quick", "full", "", "")
    assert [v.name for v in quick.variants] == ["warm-rounds2-refit"]
    assert quick.settings == (("movie", "tweet", "bbc"), ("movie", "tweet", "bbc", "spam"))
    full = bench_config("full", "lora", "", "")
    sizes = [len(s) for s in full.settings]
    assert sizes == [2] * 6 + [3] * 4 + [4] and len(set(full.settings)) == 11
    assert full.method == "lora" and full.seeds == (0, 1, 2)
    assert quick.lr == 1e-4 and full.lr == 1e-3  # adapters train at their own default lr
    assert {v.name for v in full.variants} == set(VARIANTS)
    chosen = bench_config("quick", "full", "3,4", "proportional,rounds8-refit")
    assert chosen.seeds == (3, 4) and [v.name for v in chosen.variants] == [
        "proportional",
        "rounds8-refit",
    ]
    with pytest.raises(typer.BadParameter, match="expected quick or full, found 'fast'"):
        bench_config("fast", "full", "", "")
    with pytest.raises(typer.BadParameter, match="expected full, lora or ia3, found 'qlora'"):
        bench_config("quick", "qlora", "", "")
    with pytest.raises(typer.BadParameter, match=r"unknown \['rounds9'\]"):
        bench_config("quick", "full", "", "rounds9")


@pytest.mark.parametrize("method", ["lora", "ia3"])
def test_benchmark_runs_on_adapters(tiny_bert, tiny_tasks, method):
    cfg = _two_teams(
        tiny_bert,
        tiny_tasks,
        method=method,
        max_train=32,
        max_test=16,
        epochs=2,
        lr=1e-2,
        grid={"ties": [{"density": 0.5, "scale": 1.0}]},
        variants=(VARIANTS["rounds2-refit"],),
    )
    cells = Bench(cfg).run()
    assert [c.method for c in cells] == [
        "alone",
        "ties",
        "best post-hoc+refit",
        "medusa:rounds2-refit",
    ]
    assert all(0.0 <= v <= 1.0 for c in cells for v in c.test.values())


def test_warm_variant_trains_what_the_probe_left_and_adds_to_earlier_runs(
    tiny_bert, tiny_tasks, monkeypatch, tmp_path
):
    from medusa_fed.simulations import benchmark

    from medusa_fed.errors import ConfigError

    cfg = _two_teams(
        tiny_bert,
        tiny_tasks,
        epochs=2,
        medusa_only=True,
        variants=(VARIANTS["warm-rounds2-refit"],),
    )
    rounds: list[tuple[float, bool, bool]] = []
    real = benchmark.finetune

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        rounds.append((args[2].epochs, kwargs["start"] is not None, kwargs["head"] is not None))
        return real(*args, **kwargs)

    monkeypatch.setattr(benchmark, "finetune", spy)
    cells = Bench(cfg).run()
    # only the variant's cell; two rounds of (2 - 1) / 2 epochs per team, each from a merge
    # (round 1: the owned probe values) and with a head (round 1: the probe's)
    assert [c.method for c in cells] == ["medusa:warm-rounds2-refit"]
    assert rounds == [(0.5, True, True)] * 4
    assert cells[0].params["warm_start"] is True
    # pooled with an earlier run of the same seed; the same cell twice is refused
    earlier = [dataclasses.replace(cells[0], method="alone", params={})]
    bench_report.write(
        tmp_path / "earlier", earlier, dataclasses.replace(cfg, medusa_only=False), 1.0
    )
    bench_report.write(tmp_path / "warm", cells, cfg, 2.0)
    bench_report.combine([tmp_path / "earlier", tmp_path / "warm"], tmp_path / "all")
    pooled, _, _ = bench_report.read(tmp_path / "all")
    assert sorted(c.method for c in pooled) == ["alone", "medusa:warm-rounds2-refit"]
    with pytest.raises(ValueError, match="come from more than one run"):
        bench_report.combine([tmp_path / "warm", tmp_path / "warm"], tmp_path / "twice")
    with pytest.raises(ConfigError, match="give epochs > probe_epochs"):
        Bench(dataclasses.replace(cfg, epochs=1)).run()
