"""The coordinator's stage loop with the real ClientApp on an in-process grid (no Ray).

Every test runs the real MedusaStrategy and the real team-site handlers with real Flower
Messages on a tiny BERT and three small CSV tasks.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from clients.client_app import make_client_app
from clients.team_site import TeamSite
from medusa_fed import codec
from medusa_fed.codec.records import arrays_from_record
from medusa_fed.errors import ConfigError, MedusaError, PayloadError
from medusa_fed.ownership import OwnershipMap
from medusa_fed.pipeline.probe import load_probes
from medusa_fed.pipeline.state import settings_of
from medusa_fed.protocol import (
    ARRAYS_KEY,
    HEAD_KEY,
    MSG_EVAL,
    MSG_FREE,
    MSG_PROBE,
    MSG_TRAIN,
    START_KEY,
    Settings,
    TrainRequest,
)
from medusa_fed.run_config import RunConfig
from medusa_fed.rundir.run_dir import RunDir
from medusa_fed.team_config import TeamConfig
from medusa_fed.training import load_base
from simulations.inprocess_grid import InProcessGrid
from strategies.medusa_strategy import MedusaStrategy, model_spec


def _grid(
    tasks: dict[str, Path],
    uncontrolled: tuple[str, ...] = (),
    silent: set[int] = frozenset(),
    extra: dict[int, dict] | None = None,
) -> InProcessGrid:
    configs = {
        i + 1: {"team": name, "task": str(path), "controlled": name not in uncontrolled}
        for i, (name, path) in enumerate(sorted(tasks.items()))
    }
    configs.update(extra or {})
    return InProcessGrid(make_client_app(), configs, silent=set(silent))


@pytest.fixture(autouse=True)
def _config_factory(tiny_run_config):  # type: ignore[no-untyped-def]
    global _config
    _config = tiny_run_config


def _run(
    model: Path, out: Path, grid: InProcessGrid, **overrides: object
) -> tuple[dict, MedusaStrategy]:
    cfg = _config(model, out, **overrides)
    strategy = MedusaStrategy(cfg, load_base(model_spec(cfg)))
    return strategy.run(grid).report(), strategy


def _assert_owned_deltas_sum_exactly(run: RunDir, strategy: MedusaStrategy, masks: dict) -> None:
    """Each team's stored delta is zero off its mask, and Medusa's merge is base + their sum."""
    merged, _ = run.read_tensors("merged/medusa/shared.safetensors")
    deltas = {t: run.read_tensors(f"train/{t}.safetensors")[0] for t in masks}
    for name, b in strategy.state.base.shared_state().items():
        expected = b.clone()
        for team, d in deltas.items():
            assert torch.count_nonzero(d[name][~masks[team][name]]) == 0, (team, name)
            expected += d[name]
        assert torch.equal(merged[name], expected), name


def _sent(grid: InProcessGrid, message_type: str) -> list:
    return [m for m in grid.sent if m.metadata.message_type == message_type]


def test_full_run_every_stage_and_exact_three_way_merge(tiny_bert, tiny_tasks, tmp_path):
    # Prepare
    grid = _grid(tiny_tasks)
    # Execute
    report, strategy = _run(tiny_bert, tmp_path / "run", grid, compare="ties,task_arithmetic")
    # Assert: every stage asked every team once
    for kind in (MSG_PROBE, MSG_TRAIN, MSG_FREE):
        assert len(_sent(grid, kind)) == 3
    assert len(_sent(grid, MSG_EVAL)) == 3 * 3  # three merged models, three teams
    assert report["methods"] == ["medusa", "ties", "task_arithmetic"]
    run = RunDir(tmp_path / "run", readonly=True)
    for rel in (
        "ownership.safetensors",
        "report.json",
        "report.md",
        "probe/alpha.safetensors",
        "train/gamma.safetensors",
        "baseline/beta.safetensors",
        "merged/medusa/shared.safetensors",
        "merged/ties/shared.safetensors",
    ):
        assert run.exists(rel, verify=True), rel
    # each controlled team got its own mask, and the masks are the ownership map's
    ownership = OwnershipMap.load(run.file_path("ownership.safetensors"))
    masks = {}
    for message in _sent(grid, MSG_TRAIN):
        team = strategy.state.roster.team_of(message.metadata.dst_node_id)
        masks[team] = codec.decode_mask(
            arrays_from_record(message.content[ARRAYS_KEY]), strategy.state.shapes
        )
        for name, m in masks[team].items():
            assert torch.equal(m, ownership.mask(team)[name])
    for name in strategy.state.shapes:
        stacked = torch.stack([masks[t][name] for t in sorted(masks)]).int()
        assert int(stacked.sum(0).max()) <= 1  # disjoint
    # merged == base + sum of owned deltas, bit for bit
    _assert_owned_deltas_sum_exactly(run, strategy, masks)
    # the teams learned (the tasks are easy) and the report table has their numbers
    for team in report["teams"]:
        assert team["status"] == "ok"
        assert team["metrics"]["alone"]["accuracy"] >= 0.75, team
        assert set(team["metrics"]["merged"]) == {"medusa", "ties", "task_arithmetic"}
    shares = [t["owned_share"] for t in report["teams"]]
    assert sum(shares) == pytest.approx(1.0)
    assert report["alone_from"] == "unmasked"  # the compared merges' unmasked branches


def test_merged_team_model_loads_with_from_pretrained(tiny_bert, tiny_tasks, tmp_path):
    report, _ = _run(tiny_bert, tmp_path / "run", _grid(tiny_tasks), epochs=1)
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run/merged/medusa/alpha")
    assert model.config.id2label == {0: "neg", 1: "pos"}
    merged, _ = RunDir(tmp_path / "run", readonly=True).read_tensors(
        "merged/medusa/shared.safetensors"
    )
    state = model.state_dict()
    some = next(n for n in merged if n.endswith("query.weight"))
    assert torch.equal(state[f"bert.{some}"], merged[some])


def test_uncontrolled_team_gets_no_mask_and_is_sign_elected(tiny_bert, tiny_tasks, tmp_path):
    grid = _grid(tiny_tasks, uncontrolled=("gamma",))
    report, strategy = _run(tiny_bert, tmp_path / "run", grid)
    train = {
        strategy.state.roster.team_of(m.metadata.dst_node_id): m for m in _sent(grid, MSG_TRAIN)
    }
    assert ARRAYS_KEY not in train["gamma"].content  # no mask: trains freely
    assert ARRAYS_KEY in train["alpha"].content
    gamma = next(t for t in report["teams"] if t["name"] == "gamma")
    assert gamma["controlled"] is False and gamma["owned_share"] is None
    ownership = OwnershipMap.load(tmp_path / "run/ownership.safetensors")
    assert ownership.owned_count("gamma") == 0
    stats = strategy.state.merge_stats["medusa"]["totals"]
    assert stats["overlap"] > 0  # the free branch overlaps the owners' elements
    assert stats["sign_elected"] == stats["overlap"]


def test_team_with_missing_data_is_left_out_and_the_run_goes_on(tiny_bert, tiny_tasks, tmp_path):
    extra = {9: {"team": "broken", "task": str(tmp_path / "nowhere.csv")}}
    report, strategy = _run(tiny_bert, tmp_path / "run", _grid(tiny_tasks, extra=extra))
    reasons = " ".join(r["reason"] for r in report["rejections"])
    assert "nowhere.csv" in reasons
    assert sorted(strategy.state.roster.active) == ["alpha", "beta", "gamma"]
    assert report["methods"] == ["medusa"]


def test_silent_team_times_out_in_hello_and_is_reported(tiny_bert, tiny_tasks, tmp_path):
    report, strategy = _run(
        tiny_bert, tmp_path / "run", _grid(tiny_tasks, silent={2}), **{"stage-timeout-s": 1}
    )
    assert sorted(strategy.state.roster.active) == ["alpha", "gamma"]
    assert any("no reply" in r["reason"] for r in report["rejections"])


def test_too_few_teams_stops_with_a_clear_error(tiny_bert, tiny_tasks, tmp_path):
    grid = _grid({"alpha": tiny_tasks["alpha"]})
    with pytest.raises(ConfigError, match="min-teams = 2"):
        _run(tiny_bert, tmp_path / "run", grid)


def test_restart_reuses_stored_probes_and_branches(tiny_bert, tiny_tasks, tmp_path):
    first, _ = _run(tiny_bert, tmp_path / "run", _grid(tiny_tasks), epochs=1)
    again = _grid(tiny_tasks)
    second, _ = _run(tiny_bert, tmp_path / "run", again, epochs=1)
    assert _sent(again, MSG_PROBE) == [] and _sent(again, MSG_TRAIN) == []
    assert [t["metrics"]["merged"] for t in first["teams"]] == [
        t["metrics"]["merged"] for t in second["teams"]
    ]


def test_baseline_only_run_skips_probe_and_masks(tiny_bert, tiny_tasks, tmp_path):
    grid = _grid(tiny_tasks)
    report, _ = _run(tiny_bert, tmp_path / "run", grid, merge="ties:density=0.5", epochs=1)
    assert _sent(grid, MSG_PROBE) == [] and _sent(grid, MSG_TRAIN) == []
    assert len(_sent(grid, MSG_FREE)) == 3
    assert report["methods"] == ["ties:density=0.5"]
    assert all(t["owned_share"] is None for t in report["teams"])


def test_probe_uses_the_probe_budget_not_the_training_budget(tiny_bert, tiny_tasks, tmp_path):
    grid = _grid(tiny_tasks)
    _run(tiny_bert, tmp_path / "run", grid, epochs=3, **{"probe-epochs": 0.5, "probe-density": 0.1})
    (probe,) = [m for m in _sent(grid, MSG_PROBE) if m.metadata.dst_node_id == 1]
    settings = dict(probe.content["config"])
    assert settings["epochs"] == 0.5 and settings["density"] == 0.1
    (train,) = [m for m in _sent(grid, MSG_TRAIN) if m.metadata.dst_node_id == 1]
    assert dict(train.content["config"])["epochs"] == 3.0


def test_two_rounds_continue_from_the_merge_with_the_same_masks(tiny_bert, tiny_tasks, tmp_path):
    # Prepare
    grid = _grid(tiny_tasks)
    # Execute: the same two epochs, split into two rounds
    report, strategy = _run(tiny_bert, tmp_path / "run", grid, epochs=2, rounds=2, downlink="dense")
    # Assert: every team trained twice, one epoch each, round 2 from the round-1 merge
    run = RunDir(tmp_path / "run", readonly=True)
    sent = _sent(grid, MSG_TRAIN)
    assert len(sent) == 6
    by_round: dict[int, dict[str, object]] = {1: {}, 2: {}}
    for m in sent:
        settings = dict(m.content["config"])
        assert settings["epochs"] == 1.0
        by_round[int(settings["round"])][strategy.state.roster.team_of(m.metadata.dst_node_id)] = m
    assert all(START_KEY not in m.content for m in by_round[1].values())
    base = strategy.state.base.shared_state()
    rounds = {
        r: {t: run.read_tensors(f"train-round{r}/{t}.safetensors")[0] for t in tiny_tasks}
        for r in (1, 2)
    }
    ownership = OwnershipMap.load(run.file_path("ownership.safetensors"))
    for team, message in by_round[2].items():
        start = codec.decode_dense(
            arrays_from_record(message.content[START_KEY]), strategy.state.shapes
        )
        for name, b in base.items():
            expected = b.clone()
            for t in sorted(tiny_tasks):
                expected += rounds[1][t][name]
            assert torch.equal(start[name], expected), (team, name)
        # the team continued its own round-1 head
        sent_head = codec.decode_dense(arrays_from_record(message.content[HEAD_KEY]), None)
        kept_head, _ = run.read_tensors(f"train-round1/{team}.head.safetensors")
        assert all(torch.equal(sent_head[n], kept_head[n]) for n in kept_head)
    # a team's branch is its summed round deltas; each round stayed inside its mask
    merged, _ = run.read_tensors("merged/medusa/shared.safetensors")
    for team in tiny_tasks:
        total, _ = run.read_tensors(f"train/{team}.safetensors")
        mask = ownership.mask(team)
        for name in base:
            for r in (1, 2):
                assert torch.count_nonzero(rounds[r][team][name][~mask[name]]) == 0
            assert torch.equal(total[name], rounds[1][team][name] + rounds[2][team][name])
    for name, b in base.items():
        expected = b.clone()
        for t in sorted(tiny_tasks):
            expected += run.read_tensors(f"train/{t}.safetensors")[0][name]
        assert torch.equal(merged[name], expected), name
    assert all(t["status"] == "ok" for t in report["teams"])
    assert all("before" in t["metrics"] for t in report["teams"])  # floor kept from round 1
    # a restart asks nothing again and reproduces the result
    again = _grid(tiny_tasks)
    second, _ = _run(tiny_bert, tmp_path / "run", again, epochs=2, rounds=2, downlink="dense")
    assert _sent(again, MSG_TRAIN) == []
    assert [t["metrics"]["merged"] for t in second["teams"]] == [
        t["metrics"]["merged"] for t in report["teams"]
    ]


@pytest.mark.parametrize("rounds", [1, 2])
def test_warm_start_round_one_starts_from_the_owned_probe_values(
    tiny_bert, tiny_tasks, tmp_path, rounds
):
    # Prepare: three epochs in all, the first of them the probe
    grid = _grid(tiny_tasks)
    # Execute
    report, strategy = _run(
        tiny_bert,
        tmp_path / "run",
        grid,
        epochs=3,
        rounds=rounds,
        downlink="dense",  # the start's every value is checked (test_downlink: the same bits)
        **{"warm-start": True},
    )
    # Assert: the rounds train the other two epochs, round 1 from base + owned probe values
    run = RunDir(tmp_path / "run", readonly=True)
    ownership = OwnershipMap.load(run.file_path("ownership.safetensors"))
    base = strategy.state.base.shared_state()
    probes = load_probes(strategy.state)
    owned = {t: {n: probes[t][n].to_dense() * ownership.mask(t)[n] for n in base} for t in probes}
    round1 = [m for m in _sent(grid, MSG_TRAIN) if dict(m.content["config"])["round"] == 1]
    assert len(round1) == 3
    for m in round1:
        settings = dict(m.content["config"])
        assert settings["epochs"] == 2.0 / rounds and settings["head-from"] == "probe"
        start = codec.decode_dense(arrays_from_record(m.content[START_KEY]), strategy.state.shapes)
        for name, b in base.items():
            expected = b.clone()
            for t in sorted(tiny_tasks):
                expected += owned[t][name]
            assert torch.equal(start[name], expected), name
    # every site kept its probe head for round 1
    assert all("medusa-head-probe" in c.state for c in grid.contexts.values())
    # a team's branch = its owned probe values + its round deltas, all inside its mask
    for team in tiny_tasks:
        total, _ = run.read_tensors(f"train/{team}.safetensors")
        mask = ownership.mask(team)
        for name in base:
            expected = owned[team][name].clone()
            for r in range(1, rounds + 1):
                expected += run.read_tensors(f"train-round{r}/{team}.safetensors")[0][name]
            assert torch.equal(total[name], expected), (team, name)
            assert torch.count_nonzero(total[name][~mask[name]]) == 0
    assert all(t["status"] == "ok" for t in report["teams"])


def test_rounds_with_an_uncontrolled_team(tiny_bert, tiny_tasks, tmp_path):
    grid = _grid(tiny_tasks, uncontrolled=("gamma",))
    report, strategy = _run(tiny_bert, tmp_path / "run", grid, epochs=2, rounds=2)
    gamma = [
        m
        for m in _sent(grid, MSG_TRAIN)
        if strategy.state.roster.team_of(m.metadata.dst_node_id) == "gamma"
    ]
    assert len(gamma) == 2 and all(ARRAYS_KEY not in m.content for m in gamma)
    assert START_KEY in gamma[1].content
    assert all(t["status"] == "ok" for t in report["teams"])
    assert strategy.state.merge_stats["medusa"]["totals"]["sign_elected"] > 0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"rounds": 0}, "rounds must be >= 1"),
        ({"refit-epochs": -1}, "refit-epochs must be >= 0"),
        ({"warm-start": True, "probe-epochs": 3}, "needs probe-epochs < epochs, found "),
        ({"warm-start": True, "max-steps": 10}, "needs 0 < probe-max-steps < max-steps"),
    ],
)
def test_bad_rounds_are_config_errors(tiny_bert, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        _config(tiny_bert, tmp_path / "run", **overrides)


def test_rounds_do_not_apply_to_a_baseline_only_run(tiny_bert, tmp_path):
    cfg = _config(tiny_bert, tmp_path / "run", merge="ties", rounds=4, epochs=2)
    assert cfg.train_rounds == 1 and cfg.round_epochs == 2.0
    warm = _config(tiny_bert, tmp_path / "run", merge="ties", epochs=2, **{"warm-start": True})
    assert not warm.warm and warm.round_epochs == 2.0  # no probe in a baseline-only run


def test_warm_start_splits_what_is_left_of_a_step_cap(tiny_bert, tmp_path):
    cfg = _config(
        tiny_bert,
        tmp_path / "run",
        rounds=4,
        **{"warm-start": True, "max-steps": 40, "probe-max-steps": 10},
    )
    assert cfg.round_max_steps == 8  # (40 - 10) / 4, rounded up


def test_head_refit_in_eval_for_every_method(tiny_bert, tiny_tasks, tmp_path):
    grid = _grid(tiny_tasks)
    report, strategy = _run(
        tiny_bert, tmp_path / "run", grid, epochs=1, compare="ties", **{"refit-epochs": 1}
    )
    assert all(dict(m.content["config"])["refit-epochs"] == 1.0 for m in _sent(grid, MSG_EVAL))
    run = RunDir(tmp_path / "run", readonly=True)
    for method in ("medusa", "ties"):
        for team in tiny_tasks:
            refit, _ = run.read_tensors(f"eval/{method}/{team}.head.safetensors")
            trained, _ = run.read_tensors(
                f"{'train' if method == 'medusa' else 'baseline'}/{team}.head.safetensors"
            )
            assert set(refit) == set(trained)
            assert any(not torch.equal(refit[n], trained[n]) for n in refit)  # it trained
    # the exported team model carries the re-fitted head
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run/merged/medusa/beta")
    refit, _ = run.read_tensors("eval/medusa/beta.head.safetensors")
    state = model.state_dict()
    assert all(torch.equal(state[n], t) for n, t in refit.items() if n in state)
    assert any(n in state for n in refit)
    assert all(t["status"] == "ok" for t in report["teams"])
    # a restart re-merges but keeps the re-fitted head in the export
    _run(
        tiny_bert,
        tmp_path / "run",
        _grid(tiny_tasks),
        epochs=1,
        compare="ties",
        **{"refit-epochs": 1},
    )
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run/merged/medusa/beta")
    state = again.state_dict()
    assert all(torch.equal(state[n], t) for n, t in refit.items() if n in state)


def test_floor_head_trains_for_the_whole_budget_when_rounds_split_it(
    tiny_bert, tiny_tasks, tmp_path, monkeypatch
):
    from clients import team_site

    budgets: list[tuple[bool, float]] = []
    real = team_site.finetune

    def spy(base, data, cfg, **kwargs):  # type: ignore[no-untyped-def]
        budgets.append((bool(kwargs.get("head_only")), cfg.epochs))
        return real(base, data, cfg, **kwargs)

    monkeypatch.setattr(team_site, "finetune", spy)
    _run(
        tiny_bert, tmp_path / "run", _grid(tiny_tasks), epochs=2, rounds=2, **{"eval-before": True}
    )
    floors = [epochs for head_only, epochs in budgets if head_only]
    rounds = [epochs for head_only, epochs in budgets if not head_only]
    assert floors == [2.0] * 3  # one floor per team, the run's whole budget
    assert 1.0 in rounds and 2.0 not in rounds


def test_masked_lr_scale_reaches_masked_training_only(tiny_bert, tiny_tasks, tmp_path, monkeypatch):
    from clients import team_site

    seen: list[tuple[str, float]] = []  # (kind of training, its shared-tensor lr scale)
    real = team_site.finetune

    def spy(base, data, cfg, **kwargs):  # type: ignore[no-untyped-def]
        kind = "floor" if kwargs.get("head_only") else "masked" if kwargs.get("mask") else "free"
        seen.append((kind, cfg.shared_lr_scale))
        return real(base, data, cfg, **kwargs)

    monkeypatch.setattr(team_site, "finetune", spy)
    grid = _grid(tiny_tasks)
    _run(
        tiny_bert,
        tmp_path / "run",
        grid,
        epochs=2,
        rounds=2,
        compare="ties",
        **{"masked-lr-scale": 3.0, "eval-before": True},
    )
    sent = [dict(m.content["config"]).get("masked-lr-scale") for m in _sent(grid, MSG_TRAIN)]
    assert sent == [3.0] * 6, sent
    assert sorted({k for k, _ in seen}) == ["floor", "free", "masked"]
    assert [s for k, s in seen if k == "masked"] == [3.0] * 6  # 3 teams x 2 rounds
    assert all(s == 1.0 for k, s in seen if k != "masked")  # baselines' branches, floor heads


def _round(r: int, head_from: str) -> TrainRequest:
    settings = Settings("m", "encoder-classifier", "full", 1.0, 0, 0.0, 8, 16, 10, 10, 0, False)
    return TrainRequest(settings, r, 2, "train", head_from, 1.0, 1.0, 0, "", "", "fp32")


def test_bad_masked_lr_choices_from_the_coordinator_are_refused_before_any_work():
    site = TeamSite(TeamConfig(name="alpha", task="movie"))
    request = replace(_round(1, ""), masked_lr_choices="1|-2")
    with pytest.raises(PayloadError, match=r"masked-lr-choices: expected every scale finite"):
        site.train(request)


def test_round_head_continues_the_probe_head_or_starts_fresh_when_it_is_gone():
    site = TeamSite(TeamConfig(name="alpha", task="movie"))
    warm = _round(1, "probe")
    assert site.round_head(warm) is None  # restarted after its probe: a fresh head, no error
    head = {"classifier.weight": torch.ones(2, 4)}
    site._keep_head("probe", head)
    assert torch.equal(site.round_head(warm)["classifier.weight"], head["classifier.weight"])
    with pytest.raises(MedusaError, match="no longer holds"):  # a lost round head still fails
        site.round_head(_round(2, "train-round1"))


def test_fisher_probe_scores_weigh_the_assignment_with_the_delta_s_signs(
    tiny_bert, tiny_tasks, tmp_path, monkeypatch
):
    from medusa_fed.pipeline import probe as probe_stage

    # Prepare: what the assignment is given
    seen: dict = {}
    real = probe_stage.assign_ownership

    def spy(probes, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.update(probes)
        return real(probes, *args, **kwargs)

    monkeypatch.setattr(probe_stage, "assign_ownership", spy)
    grid = _grid(tiny_tasks)

    # Execute
    report, strategy = _run(
        tiny_bert,
        tmp_path / "run",
        grid,
        **{"probe-scores": "fisher", "probe-weights": "magnitude"},
    )

    # Assert: every team sent scores on its delta's entries; the assignment weighed each entry
    # by its score with the delta's sign; the run merges exactly as ever
    run = RunDir(tmp_path / "run", readonly=True)

    def stored(rel: str) -> dict:
        tensors, _ = run.read_tensors(rel)
        return codec.decode_sparse_delta(
            {k: v.numpy() for k, v in tensors.items()}, strategy.state.shapes
        )

    deltas = {t: stored(f"probe/{t}.safetensors") for t in tiny_tasks}
    for team, delta in deltas.items():
        scores = stored(f"probe/{team}.scores.safetensors")
        for name, d in delta.items():
            w = seen[team][name]
            assert torch.equal(w.indices, d.indices)
            assert torch.equal(scores[name].indices, d.indices)
            assert torch.equal(w.values, scores[name].values * torch.sign(d.values))
            assert bool((scores[name].values >= 0).all())
    assert any(  # the weights are not the deltas' magnitudes
        not torch.equal(seen[t][n].values.abs(), d.values.abs())
        for t, delta in deltas.items()
        for n, d in delta.items()
    )
    assert all(t["status"] == "ok" for t in report["teams"])
    masks = {t: strategy.state.ownership.mask(t) for t in tiny_tasks}
    _assert_owned_deltas_sum_exactly(run, strategy, masks)


def test_masked_lr_choices_keep_each_team_s_best_branch_on_its_validation_split(
    tiny_bert, tiny_tasks, tmp_path, monkeypatch
):
    from clients import team_site

    # Prepare: validation prefers the largest scale at alpha, the smallest elsewhere
    runs: dict[tuple[str, float], torch.Tensor] = {}  # (team, scale) -> the branch's delta
    real_finetune, real_evaluate = team_site.finetune, team_site.evaluate

    def finetune(base, data, cfg, **kwargs):  # type: ignore[no-untyped-def]
        result = real_finetune(base, data, cfg, **kwargs)
        if kwargs.get("mask") is not None:
            runs[(kwargs["desc"].split()[0], cfg.shared_lr_scale)] = result.delta
        return result

    def evaluate(base, shared, head, split, **kwargs):  # type: ignore[no-untyped-def]
        desc = kwargs["desc"]
        if not desc.startswith("val "):
            return real_evaluate(base, shared, head, split, **kwargs)
        team, scale = desc.split()[1], float(desc.rsplit("x", 1)[1])
        return {"accuracy": scale if team == "alpha" else -scale}

    monkeypatch.setattr(team_site, "finetune", finetune)
    monkeypatch.setattr(team_site, "evaluate", evaluate)
    grid = _grid(tiny_tasks)

    # Execute
    report, strategy = _run(
        tiny_bert,
        tmp_path / "run",
        grid,
        rounds=1,
        **{"warm-start": False, "masked-lr-choices": "1|3|2"},
    )

    # Assert: every team trained once per scale; each kept (and sent) the branch validation
    # chose, and the merge is base + the kept branches' owned values
    assert sorted(runs) == sorted((t, s) for t in tiny_tasks for s in (1.0, 2.0, 3.0))
    run = RunDir(tmp_path / "run", readonly=True)
    assert strategy.state.ownership is not None
    masks = {t: strategy.state.ownership.mask(t) for t in tiny_tasks}
    assert sorted(t["name"] for t in report["teams"]) == sorted(tiny_tasks)
    for name in tiny_tasks:
        metrics = run.read_json(f"train/{name}.metrics.json")
        want = 3.0 if name == "alpha" else 1.0
        assert metrics["train_lr_scale"] == want, (name, metrics)
        stored, _ = run.read_tensors(f"train/{name}.safetensors")
        for tensor, d in stored.items():
            m = masks[name][tensor]
            assert torch.equal(d[m], runs[(name, want)][tensor][m]), (name, tensor)
    _assert_owned_deltas_sum_exactly(run, strategy, masks)


def test_class_balance_in_the_run_config_reaches_every_site_s_subsets():
    # Prepare: spam, 87% ham
    site = TeamSite(TeamConfig(name="alpha", task="spam"))
    plain = RunConfig.from_mapping({"max-train": 64, "max-eval": 32})
    balanced = RunConfig.from_mapping({"max-train": 64, "max-eval": 32, "class-balance": True})

    # Execute
    few = site.data(settings_of(plain))
    even = site.data(settings_of(balanced))

    # Assert: the request's settings carry it, and the site's split caps follow
    assert sum(few.test.label_ids) <= 5
    assert [sum(s.label_ids) for s in even.splits().values()] == [32, 16, 16]


def test_federated_anchors_train_in_rounds_from_each_merge_with_personal_heads(
    tiny_bert, tiny_tasks, tmp_path
):
    """FedAvg (linear each round) and TIES each round, with Medusa's rounds and budget: round 1
    from the base, round 2 from round 1's merge with each team's own head; the anchor's model is
    the last round's merge."""
    # Prepare
    grid = _grid(tiny_tasks)
    # Execute
    report, strategy = _run(
        tiny_bert, tmp_path / "run", grid, federated="linear,ties", rounds=2, epochs=2
    )
    # Assert: both anchors scored by every team
    assert report["methods"] == ["medusa", "fed-linear", "fed-ties"]
    assert all(set(t["metrics"]["merged"]) >= {"fed-linear", "fed-ties"} for t in report["teams"])
    run = RunDir(tmp_path / "run", readonly=True)
    base = strategy.state.base.shared_state()
    fed = [
        m
        for m in _sent(grid, MSG_TRAIN)
        if dict(m.content["config"])["branch"].startswith("fed-linear")
    ]
    assert len(fed) == 6 and all(ARRAYS_KEY not in m.content for m in fed)  # 3 teams x 2, no mask
    round1 = {t: run.read_tensors(f"fed-linear-round1/{t}.safetensors")[0] for t in tiny_tasks}
    round2 = {t: run.read_tensors(f"fed-linear-round2/{t}.safetensors")[0] for t in tiny_tasks}
    for m in fed:
        config = dict(m.content["config"])
        if config["round"] == 1:
            assert START_KEY not in m.content and config["head-from"] == ""
            continue
        assert config["head-from"] == "fed-linear-round1"  # personal heads continue
        start = codec.decode_dense(arrays_from_record(m.content[START_KEY]), strategy.state.shapes)
        for name, b in base.items():  # round 2 starts from FedAvg of round 1
            mean = torch.stack([round1[t][name] for t in sorted(round1)]).sum(0) / 3
            assert torch.allclose(start[name], b + mean, atol=1e-6), name
    merged, _ = run.read_tensors("merged/fed-linear/shared.safetensors")
    some = next(iter(base))
    first = base[some] + torch.stack([round1[t][some] for t in sorted(round1)]).sum(0) / 3
    second = first + torch.stack([round2[t][some] for t in sorted(round2)]).sum(0) / 3
    assert torch.allclose(merged[some], second, atol=1e-6)


def test_row_ownership_masks_whole_rows_and_the_merge_stays_exact(tiny_bert, tiny_tasks, tmp_path):
    # Prepare
    grid = _grid(tiny_tasks)
    # Execute: full fine-tuning, one owner per row of every weight matrix
    report, strategy = _run(tiny_bert, tmp_path / "run", grid, **{"ownership-unit": "row"})
    # Assert: every row of every matrix has one owner; vectors are owned by element
    run = RunDir(tmp_path / "run", readonly=True)
    ownership = OwnershipMap.load(run.file_path("ownership.safetensors"))
    matrices = [n for n, ids in ownership.owners.items() if ids.dim() == 2]
    assert matrices
    for name in matrices:
        ids = ownership.owners[name]
        assert (ids == ids[:, :1]).all(), name
    vectors = [ids for ids in ownership.owners.values() if ids.dim() == 1 and ids.numel() > 3]
    assert any(len(set(ids.tolist())) > 1 for ids in vectors)  # not one owner per vector
    # each team trained its own rows only, and the merge is base + the owned deltas exactly
    _assert_owned_deltas_sum_exactly(run, strategy, {t: ownership.mask(t) for t in tiny_tasks})
    assert all(t["status"] == "ok" for t in report["teams"])
    assert report["alone_from"] == "masked"  # nothing compared: no unmasked branch trained
