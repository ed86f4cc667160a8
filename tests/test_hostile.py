"""A hostile or broken team cannot crash the coordinator, take another team's name, or wedge a
restart; a careless coordinator cannot resume a run directory with other settings or store a
merge with inf / NaN weights. Each case runs the real coordinator and team sites (tiny BERT,
in-process Flower grid) with one reply tampered with, and asserts who was left out and why."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from flwr.app import ConfigRecord, Message, MetricRecord

from clients.client_app import make_client_app
from medusa_fed.codec import encode_dense
from medusa_fed.codec.records import record_from_arrays
from medusa_fed.errors import ConfigError
from medusa_fed.protocol import CONFIG_KEY, HEAD_KEY, METRICS_KEY, MSG_HELLO, MSG_TRAIN
from medusa_fed.run_config import RunConfig
from medusa_fed.rundir import RunDir
from medusa_fed.training import load_base
from simulations.inprocess_grid import InProcessGrid
from strategies.medusa_strategy import MedusaStrategy, model_spec

BAD = 2  # node 2 is team "beta"


@pytest.fixture
def run(tiny_bert, tiny_tasks, tiny_run_config, tmp_path):  # type: ignore[no-untyped-def]
    """Run the coordinator with a tamper hook on node BAD's replies of one message type."""

    def go(kind: str | None = None, change=None, out: Path | None = None, **overrides):  # type: ignore[no-untyped-def]
        def hook(node: int, request: Message, reply: Message) -> list[Message]:
            if node == BAD and request.metadata.message_type == kind and not reply.has_error():
                return change(reply)
            return [reply]

        nodes = {
            i + 1: {"team": name, "task": str(path)}
            for i, (name, path) in enumerate(sorted(tiny_tasks.items()))
        }
        grid = InProcessGrid(make_client_app(), nodes, tamper=hook if kind else None)
        cfg = tiny_run_config(
            tiny_bert,
            out or tmp_path / "run",
            epochs=1,
            **{"eval-before": False, "stage-timeout-s": 1, **overrides},
        )
        strategy = MedusaStrategy(cfg, load_base(model_spec(cfg)))
        return strategy.run(grid).report(), strategy

    return go


def _status(report: dict) -> dict[str, str]:
    return {t["name"]: t["status"] for t in report["teams"]}


def _reasons(out: Path) -> str:
    return "\n".join(r["reason"] for r in RunDir(out, readonly=True).rejections())


def _config(reply: Message, **changes: object) -> list[Message]:
    facts = {**dict(reply.content[CONFIG_KEY]), **changes}
    reply.content[CONFIG_KEY] = ConfigRecord({k: v for k, v in facts.items() if v is not None})
    return [reply]


@pytest.mark.parametrize("name", ["../x", "sub/evil", ".hidden", "a" * 300, ""])
def test_a_hostile_team_name_leaves_that_node_out_and_the_run_goes_on(run, tmp_path, name):
    # Execute
    report, _ = run(MSG_HELLO, lambda r: _config(r, team=name))
    # Assert: the others ran to the end; nothing was written under the hostile name
    assert sorted(_status(report)) == ["alpha", "gamma"]
    assert set(_status(report).values()) == {"ok"}
    assert "expected 1-64 letters, digits" in _reasons(tmp_path / "run")
    written = [p.name for p in (tmp_path / "run").rglob("*")]
    assert not any(".." in n or "evil" in n or n.startswith(".h") for n in written)


def test_two_nodes_claiming_one_name_are_both_left_out(run, tmp_path):
    # Execute: node 2 (beta) says it is alpha
    report, _ = run(MSG_HELLO, lambda r: _config(r, team="alpha"), **{"min-teams": 1})
    # Assert: neither claimant of 'alpha' is trusted with it; gamma runs on
    assert _status(report) == {"gamma": "ok"}
    assert "team name 'alpha' claimed by nodes 1, 2" in _reasons(tmp_path / "run")


def test_a_hello_without_controlled_is_refused_at_the_edge(run, tmp_path):
    report, _ = run(MSG_HELLO, lambda r: _config(r, controlled=None))
    assert sorted(_status(report)) == ["alpha", "gamma"]
    assert "HelloReply.controlled: expected config key 'controlled'" in _reasons(tmp_path / "run")


def test_a_nan_metric_drops_the_team_and_a_restart_of_honest_teams_finishes(run, tmp_path):
    # Execute
    def nan(reply: Message) -> list[Message]:
        reply.content[METRICS_KEY] = MetricRecord({"alone_accuracy": float("nan")})
        return [reply]

    report, _ = run(MSG_TRAIN, nan)
    again, _ = run()  # the same directory, every team honest
    # Assert
    assert _status(report)["beta"].startswith("left out: train")
    assert "metric 'alone_accuracy': expected a finite number" in _reasons(tmp_path / "run")
    assert set(_status(again).values()) == {"ok"}


def test_a_head_carrying_shared_tensor_names_is_rejected(run, tmp_path):
    def smuggle(reply: Message) -> list[Message]:
        fake = {"encoder.layer.0.attention.self.query.weight": torch.zeros(2, 2)}
        reply.content[HEAD_KEY] = record_from_arrays(encode_dense(fake))
        return [reply]

    report, _ = run(MSG_TRAIN, smuggle)
    assert _status(report)["beta"].startswith("left out: train")
    assert "are shared-space names" in _reasons(tmp_path / "run")


def test_an_interrupted_branch_write_is_asked_again_on_restart(run, tmp_path):
    # Prepare: a finished run, then the state an old writer left when killed between the branch
    # file and its metrics
    clean, _ = run(out=tmp_path / "clean")
    run(out=tmp_path / "run")
    RunDir(tmp_path / "run").remove("train/beta.metrics.json")
    # Execute
    report, _ = run()
    # Assert
    assert set(_status(report).values()) == {"ok"}
    assert "no metrics beside it" in _reasons(tmp_path / "run")
    a, _ = RunDir(tmp_path / "run", readonly=True).read_tensors("merged/medusa/shared.safetensors")
    b, _ = RunDir(tmp_path / "clean", readonly=True).read_tensors(
        "merged/medusa/shared.safetensors"
    )
    assert all(torch.equal(a[n], b[n]) for n in b)


def test_uncontrolled_teams_can_be_refused(tiny_bert, tiny_tasks, tiny_run_config, tmp_path):
    nodes = {
        i + 1: {"team": n, "task": str(p), "controlled": n != "beta"}
        for i, (n, p) in enumerate(sorted(tiny_tasks.items()))
    }
    cfg = tiny_run_config(tiny_bert, tmp_path / "run", epochs=1, **{"allow-uncontrolled": False})
    report = MedusaStrategy(cfg, load_base(model_spec(cfg))).run(
        InProcessGrid(make_client_app(), nodes)
    )
    assert _status(report.report())["beta"].startswith("left out: hello")
    assert "allow-uncontrolled = false" in _reasons(tmp_path / "run")


def test_a_restart_with_other_settings_is_refused_naming_the_keys(run, tmp_path):
    run()
    with pytest.raises(ConfigError, match=r"assignment: 'proportional' -> 'argmax'"):
        run(assignment="argmax")
    with pytest.raises(ConfigError, match=r"seed: 0 -> 3"):
        run(seed=3)
    with pytest.raises(ConfigError, match=r"downlink-dtype: 'fp32' -> 'fp16'"):
        run(**{"downlink-dtype": "fp16"})
    report, _ = run(**{"stage-timeout-s": 5})  # a setting that changes nothing stored
    assert set(_status(report).values()) == {"ok"}
    report, _ = run(downlink="dense")  # how the weights travel: the same results at fp32
    assert set(_status(report).values()) == {"ok"}


def test_a_merge_with_inf_weights_is_left_out_and_bad_grids_fail_at_start(run, tmp_path):
    report, _ = run(compare="task_arithmetic:scale=1e39,ties")
    assert report["methods"] == ["medusa", "ties"]
    assert not (tmp_path / "run/merged/task_arithmetic-scale1e39").exists()
    for bad in ("ties:density=2", "ties:density=nan", "dare_ties:drop_rate=1", "medusa:seed=x"):
        with pytest.raises(ConfigError):
            RunConfig.from_mapping({"compare": bad})


def test_medusa_merge_refuses_a_grid_it_cannot_choose():
    from medusa_fed.history.remerge import make_spec

    with pytest.raises(ConfigError, match="found a grid"):
        make_spec("ties:scale=1|2")
    assert make_spec("ties:density=0.5", scale=2.0).density == 0.5  # settings in the text count


def test_a_causal_lm_is_not_run_as_a_classifier_and_max_length_must_fit(
    tiny_bert, tmp_path, tiny_run_config
):
    from medusa_fed.errors import ModelError
    from medusa_fed.training.config import ModelSpec
    from medusa_fed.training.tiny_models import write_tiny_model

    llama = write_tiny_model(tmp_path / "llama", "llama")
    with pytest.raises(ModelError, match="is a causal language model .*use causal-lm"):
        load_base(ModelSpec(source=str(llama), family="encoder-classifier"))
    with pytest.raises(ModelError, match="is not a causal language model"):
        load_base(ModelSpec(source=str(tiny_bert), family="causal-lm"))
    base = load_base(ModelSpec(source=str(tiny_bert)))
    assert base.max_positions is not None
    too_long = base.max_positions + 1
    cfg = tiny_run_config(tiny_bert, tmp_path / "run", **{"max-length": too_long})
    with pytest.raises(ConfigError, match=f"max-length {too_long}: expected at most"):
        MedusaStrategy(cfg, base).run(InProcessGrid(make_client_app(), {}))


def test_a_probe_denser_than_announced_is_rejected(
    tiny_bert, tiny_tasks, tiny_run_config, tmp_path
):
    """A dense probe (every element, huge magnitudes) used to take every element under the
    default policy; now it is refused for carrying more than the announced top-d."""
    from clients.team_site import TeamSite
    from medusa_fed.codec import encode_sparse_delta
    from medusa_fed.deltas import top_d
    from medusa_fed.pipeline import DirectTransport, run_pipeline
    from medusa_fed.protocol import ProbeReply, ProbeRequest
    from medusa_fed.team_config import TeamConfig

    sites = {
        i + 1: TeamSite(TeamConfig(n, str(p)))
        for i, (n, p) in enumerate(sorted(tiny_tasks.items()))
    }

    def greedy(request):  # type: ignore[no-untyped-def]
        reply = sites[2].handle(request)
        if isinstance(request, ProbeRequest):
            base = load_base(request.settings.model_spec()).shared_state()
            dense = {n: top_d(torch.full_like(t, 1e30), 1.0) for n, t in base.items()}
            return ProbeReply(reply.sender, encode_sparse_delta(dense), reply.metrics)
        return reply

    handlers = {n: s.handle for n, s in sites.items()} | {2: greedy}
    cfg = tiny_run_config(tiny_bert, tmp_path / "run", epochs=1)
    report = run_pipeline(cfg, load_base(model_spec(cfg)), DirectTransport(handlers)).report()
    assert _status(report)["beta"].startswith("left out: probe")
    assert "expected at most" in _reasons(tmp_path / "run") and "found" in _reasons(
        tmp_path / "run"
    )
    assert {t["name"]: t["owned_share"] for t in report["teams"]}["alpha"] == pytest.approx(
        0.5, abs=0.2
    )


def test_a_federated_anchor_that_overflows_is_left_out_and_the_run_goes_on(run, tmp_path):
    """A team's huge (finite) values in a federated round make the anchor's merge inf: the
    anchor is left out of the comparison; Medusa's merge and the other methods stand."""
    from medusa_fed.codec import decode_dense, encode_dense
    from medusa_fed.codec.records import arrays_from_record
    from medusa_fed.protocol import ARRAYS_KEY

    def huge(reply: Message) -> list[Message]:
        if any(k.endswith("::owned") for k in reply.content[ARRAYS_KEY]):
            return [reply]  # Medusa's masked TRAIN: left honest; the federated rounds are not
        delta = decode_dense(arrays_from_record(reply.content[ARRAYS_KEY]), None)
        reply.content[ARRAYS_KEY] = record_from_arrays(
            encode_dense({n: torch.full_like(t, 3e38) for n, t in delta.items()})
        )
        return [reply]

    report, _ = run(MSG_TRAIN, huge, federated="task_arithmetic:scale=10,linear", rounds=1)
    assert "fed-task_arithmetic:scale=10" not in report["methods"]
    assert report["methods"][0] == "medusa" and "fed-linear" in report["methods"]


def _probe_scaled_run(tiny_bert, tiny_tasks, tiny_run_config, out, scale, **overrides):  # type: ignore[no-untyped-def]
    """A run where team beta multiplies its (honest, top-d) probe values by ``scale``."""
    from clients.team_site import TeamSite
    from medusa_fed.codec import decode_sparse_delta, encode_sparse_delta
    from medusa_fed.deltas import SparseDelta
    from medusa_fed.pipeline import DirectTransport, run_pipeline
    from medusa_fed.protocol import ProbeReply, ProbeRequest
    from medusa_fed.team_config import TeamConfig

    sites = {
        i + 1: TeamSite(TeamConfig(n, str(p)))
        for i, (n, p) in enumerate(sorted(tiny_tasks.items()))
    }

    def greedy(request):  # type: ignore[no-untyped-def]
        reply = sites[BAD].handle(request)
        if isinstance(request, ProbeRequest) and isinstance(reply, ProbeReply):
            shapes = load_base(request.settings.model_spec()).shared_state()
            sparse = decode_sparse_delta(
                reply.delta, {n: tuple(t.shape) for n, t in shapes.items()}
            )
            scaled = {
                n: SparseDelta(s.shape, s.indices, s.values * scale) for n, s in sparse.items()
            }
            return ProbeReply(reply.sender, encode_sparse_delta(scaled), reply.metrics)
        return reply

    handlers = {n: s.handle for n, s in sites.items()} | {BAD: greedy}
    cfg = tiny_run_config(tiny_bert, out, epochs=1, **overrides)
    report = run_pipeline(cfg, load_base(model_spec(cfg)), DirectTransport(handlers)).report()
    return report, {t["name"]: t["owned_share"] for t in report["teams"]}


@pytest.mark.parametrize("weights", ["rank", "magnitude"])
def test_a_probe_scaled_up_gains_no_share_under_rank_weights(
    tiny_bert, tiny_tasks, tiny_run_config, tmp_path, weights
):
    """Scaled by 8 (a top-d probe, under the norm bound): with magnitudes (the old default) beta
    wins most contested elements; with ranks (the default) its map is the honest one."""
    kw = {"probe-density": 0.5, "probe-weights": weights}
    _, honest = _probe_scaled_run(
        tiny_bert, tiny_tasks, tiny_run_config, tmp_path / "honest", 1.0, **kw
    )
    report, greedy = _probe_scaled_run(
        tiny_bert, tiny_tasks, tiny_run_config, tmp_path / "greedy", 8.0, **kw
    )
    assert set(_status(report).values()) == {"ok"}
    if weights == "rank":
        assert greedy == honest
        assert greedy["beta"] < 0.4
    else:  # what the rank weights close
        assert greedy["beta"] > honest["beta"] + 0.1


def test_a_probe_scaled_by_1e30_is_refused_by_its_norm(
    tiny_bert, tiny_tasks, tiny_run_config, tmp_path
):
    report, shares = _probe_scaled_run(
        tiny_bert, tiny_tasks, tiny_run_config, tmp_path / "run", 1e30
    )
    assert _status(report)["beta"].startswith("left out: probe")
    assert "probe L2 norm" in _reasons(tmp_path / "run")
    assert shares["alpha"] == pytest.approx(0.5, abs=0.1)


def test_a_share_cap_holds_in_a_run(run, tmp_path):
    report, _ = run(**{"max-share": 0.3})
    shares = {t["name"]: t["owned_share"] for t in report["teams"]}
    assert set(_status(report).values()) == {"ok"}
    assert max(shares.values()) <= 0.3 and min(shares.values()) > 0.25


def test_owned_values_scaled_by_1e6_are_refused_by_the_update_norm_bound(run, tmp_path):
    from medusa_fed.codec.records import arrays_from_record
    from medusa_fed.protocol import ARRAYS_KEY

    def inflate(reply: Message) -> list[Message]:
        arrays = arrays_from_record(reply.content[ARRAYS_KEY])
        reply.content[ARRAYS_KEY] = record_from_arrays(
            {k: v * 1e6 if k.endswith("::owned") else v for k, v in arrays.items()}
        )
        return [reply]

    report, _ = run(MSG_TRAIN, inflate)
    assert _status(report)["beta"].startswith("left out: train")
    assert "update L2 norm" in _reasons(tmp_path / "run")
    assert _status(report)["alpha"] == "ok" and _status(report)["gamma"] == "ok"


@pytest.mark.parametrize("value", [7.0, -1.0])
def test_a_metric_out_of_its_range_drops_the_team(run, tmp_path, value):
    def bad(reply: Message) -> list[Message]:
        metrics = dict(reply.content[METRICS_KEY])
        reply.content[METRICS_KEY] = MetricRecord({**metrics, "alone_accuracy": value})
        return [reply]

    report, _ = run(MSG_TRAIN, bad)
    assert _status(report)["beta"].startswith("left out: train")
    assert f"metric 'alone_accuracy': expected a value in [0, 1], found {value}" in _reasons(
        tmp_path / "run"
    )
    assert _status(report)["alpha"] == "ok"


def test_a_node_claiming_another_teams_name_is_left_out_when_names_are_bound(run, tmp_path):
    """Node 2 (registered for beta) says it is alpha: with team-nodes the claim is refused and
    the real alpha stays in (unbound, both claimants of 'alpha' are left out)."""
    report, _ = run(MSG_HELLO, lambda r: _config(r, team="alpha"), **{"team-nodes": TABLE})
    assert _status(report) == {"alpha": "ok", "gamma": "ok"}
    assert "node 2 says it is team 'alpha', expected 'beta'" in _reasons(tmp_path / "run")


def test_a_node_not_in_the_team_table_is_left_out(run, tmp_path):
    report, _ = run(**{"team-nodes": "alpha=1,gamma=3"})
    assert _status(report) == {"alpha": "ok", "gamma": "ok"}
    assert "expected a node listed in team-nodes" in _reasons(tmp_path / "run")
    for bad in ("alpha=x", "alpha=1,beta=1", "alpha=1,alpha=2"):
        with pytest.raises(ConfigError, match="team-nodes"):
            RunConfig.from_mapping({"team-nodes": bad})


TABLE = "alpha=1,beta=2,gamma=3"  # the in-process grid's node ids (sorted task names)


def test_the_privacy_option_clips_every_probe_and_train_upload(run, tmp_path):
    from medusa_fed.codec import decode_sparse_delta

    report, strategy = run(**{"dp-clip": 0.05, "dp-noise": 0.0})
    assert set(_status(report).values()) == {"ok"}
    rd = RunDir(tmp_path / "run", readonly=True)
    for team in ("alpha", "beta", "gamma"):
        arrays, _ = rd.read_tensors(f"probe/{team}.safetensors")
        sparse = decode_sparse_delta(
            {k: v.numpy() for k, v in arrays.items()}, strategy.state.shapes
        )
        probe = sum(float(s.values.double().square().sum()) for s in sparse.values()) ** 0.5
        delta, _ = rd.read_tensors(f"train/{team}.safetensors")
        trained = sum(float(t.double().square().sum()) for t in delta.values()) ** 0.5
        assert probe == pytest.approx(0.05, rel=0.01)  # honest probes are ~0.75: all clipped
        assert trained <= 0.05 * 1.0001
