"""Fault injection: bad payloads, failing and late teams, coordinator crashes, corrupt files.

Every case runs the real coordinator and team sites (tiny BERT, in-process grid), injects one
fault, and asserts the exact outcome: who was left out and why, and that the merged model equals
the base plus the stored deltas of the good teams alone (a bad team's elements stay at the base).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Message

from clients.client_app import make_client_app
from medusa_fed.codec.records import arrays_from_record, record_from_arrays
from medusa_fed.pipeline import run as pipeline_run
from medusa_fed.protocol import ARRAYS_KEY, CONFIG_KEY, HEAD_KEY, MSG_EVAL, MSG_PROBE, MSG_TRAIN
from medusa_fed.rundir.run_dir import RunDir
from medusa_fed.training import load_base
from simulations.inprocess_grid import InProcessGrid
from strategies.medusa_strategy import MedusaStrategy, model_spec

BAD = 2  # node 2 is team "beta"
Tamper = Callable[[int, Message, Message], list[Message]]


@pytest.fixture
def run(tiny_bert, tiny_tasks, tiny_run_config, tmp_path):  # type: ignore[no-untyped-def]
    """Run the coordinator on ``out`` with a tamper hook; returns (report, strategy, grid)."""

    def go(
        tamper: Tamper | None = None,
        out: Path | None = None,
        silent: set[int] = frozenset(),
        **overrides: object,
    ):  # type: ignore[no-untyped-def]
        configs = {
            i + 1: {"team": name, "task": str(path)}
            for i, (name, path) in enumerate(sorted(tiny_tasks.items()))
        }
        grid = InProcessGrid(make_client_app(), configs, silent=set(silent), tamper=tamper)
        cfg = tiny_run_config(
            tiny_bert,
            out or tmp_path / "run",
            epochs=1,
            **{"eval-before": False, "stage-timeout-s": 1, **overrides},
        )
        strategy = MedusaStrategy(cfg, load_base(model_spec(cfg)))
        return strategy.run(grid).report(), strategy, grid

    return go


def on(node: int, message_type: str, change: Callable[[Message], list[Message]]) -> Tamper:
    """A tamper hook that applies ``change`` to ``node``'s reply to ``message_type`` only."""

    def hook(nid: int, request: Message, reply: Message) -> list[Message]:
        if nid == node and request.metadata.message_type == message_type:
            return change(reply)
        return [reply]

    return hook


def edit_arrays(
    edit: Callable[[dict[str, np.ndarray]], None],
) -> Callable[[Message], list[Message]]:
    def change(reply: Message) -> list[Message]:
        arrays = dict(arrays_from_record(reply.content[ARRAYS_KEY]))
        edit(arrays)
        reply.content[ARRAYS_KEY] = record_from_arrays(arrays)
        return [reply]

    return change


def first_key(arrays: dict[str, np.ndarray]) -> str:
    return sorted(k for k in arrays if arrays[k].size > 4)[0]


def _truncate(a: dict) -> None:
    k = first_key(a)
    a[k] = a[k][:-1]


def _extend(a: dict) -> None:  # values for elements the team does not own
    k = first_key(a)
    a[k] = np.concatenate([a[k], np.ones(3, np.float32)])


def _nan(a: dict) -> None:
    k = first_key(a)
    a[k] = a[k].copy()
    a[k][0] = np.nan


def _inf(a: dict) -> None:
    k = first_key(a)
    a[k] = a[k].copy()
    a[k][-1] = np.inf


def _dtype(a: dict) -> None:
    k = first_key(a)
    a[k] = a[k].astype(np.float64)


def _shape(a: dict) -> None:
    k = first_key(a)
    a[k] = a[k][: (a[k].size // 2) * 2].reshape(2, -1)


def _rename(a: dict) -> None:
    k = first_key(a)
    a["not_in_model." + k] = a.pop(k)


def _oversize(a: dict) -> None:
    k = first_key(a)
    a[k] = np.zeros(3_000_000, np.float32)  # > 2 x the tiny model's dense fp32 size


def _drop_tensor(a: dict) -> None:
    a.pop(first_key(a))


def _wrong_fingerprint(reply: Message) -> list[Message]:
    facts = dict(reply.content[CONFIG_KEY])
    reply.content[CONFIG_KEY] = ConfigRecord({**facts, "fingerprint": "0" * 64})
    return [reply]


def _wrong_team(reply: Message) -> list[Message]:
    facts = dict(reply.content[CONFIG_KEY])
    reply.content[CONFIG_KEY] = ConfigRecord({**facts, "team": "alpha"})
    return [reply]


def _no_arrays(reply: Message) -> list[Message]:
    del reply.content[ARRAYS_KEY]
    return [reply]


def _unknown_node(reply: Message) -> list[Message]:
    reply.metadata.__dict__["_src_node_id"] = 4242
    return [reply]


BAD_TRAIN_PAYLOADS = {
    "truncated": (edit_arrays(_truncate), "values for"),
    "values for non-owned elements": (edit_arrays(_extend), "values for"),
    "NaN": (edit_arrays(_nan), "NaN/Inf"),
    "Inf": (edit_arrays(_inf), "NaN/Inf"),
    "wrong dtype": (edit_arrays(_dtype), "expected dtype float32"),
    "wrong shape": (edit_arrays(_shape), "1-D array"),
    "wrong tensor name": (edit_arrays(_rename), "unknown tensor name"),
    "missing tensor": (edit_arrays(_drop_tensor), "missing from the payload"),
    "oversized": (edit_arrays(_oversize), "expected at most"),
    "wrong fingerprint": (_wrong_fingerprint, "expected the run's base"),
    "claims another team": (_wrong_team, "expected 'beta'"),
    "no payload record": (_no_arrays, "payload rejected"),
    "reply from an unknown node": (_unknown_node, "no reply within"),
}


def assert_merged_from(run_dir: Path, strategy: MedusaStrategy, teams: list[str]) -> None:
    """merged/medusa == base + the stored deltas of ``teams`` exactly."""
    store = RunDir(run_dir, readonly=True)
    merged, _ = store.read_tensors("merged/medusa/shared.safetensors")
    base = strategy.state.base.shared_state()
    deltas = [store.read_tensors(f"train/{t}.safetensors")[0] for t in teams]
    for name, b in base.items():
        expected = b.clone()
        for d in deltas:
            expected += d[name]
        assert torch.equal(merged[name], expected), name


@pytest.mark.parametrize("case", sorted(BAD_TRAIN_PAYLOADS))
def test_bad_train_payload_is_rejected_and_the_others_merge(run, tmp_path, case):
    change, phrase = BAD_TRAIN_PAYLOADS[case]
    report, strategy, _ = run(on(BAD, MSG_TRAIN, change))
    run_dir = tmp_path / "run"
    beta = next(t for t in report["teams"] if t["name"] == "beta")
    assert beta["status"].startswith("left out: train"), beta["status"]
    reasons = [r["reason"] for r in report["rejections"] if r["team"] == "beta"]
    assert any(phrase in r for r in reasons), reasons
    assert not RunDir(run_dir, readonly=True).exists("train/beta.safetensors")
    assert_merged_from(run_dir, strategy, ["alpha", "gamma"])
    # beta's owned elements stayed at the base
    merged, _ = RunDir(run_dir, readonly=True).read_tensors("merged/medusa/shared.safetensors")
    base = strategy.state.base.shared_state()
    mask = strategy.state.ownership.mask("beta")  # type: ignore[union-attr]
    for name in base:
        assert torch.equal(merged[name][mask[name]], base[name][mask[name]])


def test_duplicated_reply_keeps_the_first(run, tmp_path):
    report, strategy, _ = run(on(BAD, MSG_TRAIN, lambda r: [r, r]))
    assert all(t["status"] == "ok" for t in report["teams"])
    assert any("duplicated reply" in r["reason"] for r in report["rejections"])
    assert_merged_from(tmp_path / "run", strategy, ["alpha", "beta", "gamma"])


def test_bad_probe_payload_leaves_the_team_out_and_the_run_goes_on(run, tmp_path):
    report, strategy, _ = run(on(BAD, MSG_PROBE, edit_arrays(_nan)))
    beta = next(t for t in report["teams"] if t["name"] == "beta")
    assert beta["status"].startswith("left out: probe")
    assert "beta" not in strategy.state.ownership.teams  # type: ignore[union-attr]
    assert_merged_from(tmp_path / "run", strategy, ["alpha", "gamma"])


def test_late_team_in_train_is_merged_on_resume_bit_identical(run, tmp_path):
    # on time, in one go
    _, _, _ = run(out=tmp_path / "ontime")
    # beta is silent in TRAIN: the merge goes on without it ...
    drop_train = on(BAD, MSG_TRAIN, lambda r: [])
    report, strategy, _ = run(drop_train, out=tmp_path / "late")
    assert next(t for t in report["teams"] if t["name"] == "beta")["status"].startswith("left out")
    assert_merged_from(tmp_path / "late", strategy, ["alpha", "gamma"])
    # ... and when the coordinator resumes with beta back, only beta trains
    report2, strategy2, grid = run(out=tmp_path / "late")
    trained = [
        strategy2.state.roster.team_of(m.metadata.dst_node_id)
        for m in grid.sent
        if m.metadata.message_type == MSG_TRAIN
    ]
    assert trained == ["beta"]
    probed = [m for m in grid.sent if m.metadata.message_type == MSG_PROBE]
    assert probed == []
    late, _ = RunDir(tmp_path / "late", readonly=True).read_tensors(
        "merged/medusa/shared.safetensors"
    )
    ontime, _ = RunDir(tmp_path / "ontime", readonly=True).read_tensors(
        "merged/medusa/shared.safetensors"
    )
    for name in ontime:
        assert torch.equal(late[name], ontime[name]), name


class Crash(RuntimeError):
    pass


@pytest.mark.parametrize("stage", ["probe", "assign", "train", "merge", "evaluate"])
def test_coordinator_crash_in_each_stage_resumes_without_redoing_stored_work(
    run, tmp_path, monkeypatch, stage
):
    run(out=tmp_path / "clean")
    name = {"merge": "merge_and_choose"}.get(stage, stage)
    original = getattr(pipeline_run, name)

    def crash(*args):  # type: ignore[no-untyped-def]
        original(*args)  # the stage stores its outputs, then the process dies
        raise Crash(stage)

    monkeypatch.setattr(pipeline_run, name, crash)
    with pytest.raises(Crash):
        run(out=tmp_path / "crashed")
    monkeypatch.setattr(pipeline_run, name, original)
    report, _, grid = run(out=tmp_path / "crashed")
    asked = {m.metadata.message_type for m in grid.sent}
    if stage in ("probe", "assign", "train", "merge", "evaluate"):
        assert MSG_PROBE not in asked
    if stage in ("train", "merge", "evaluate"):
        assert MSG_TRAIN not in asked
    a, _ = RunDir(tmp_path / "crashed", readonly=True).read_tensors(
        "merged/medusa/shared.safetensors"
    )
    b, _ = RunDir(tmp_path / "clean", readonly=True).read_tensors(
        "merged/medusa/shared.safetensors"
    )
    assert all(torch.equal(a[n], b[n]) for n in b)
    assert all(t["status"] == "ok" for t in report["teams"])


def test_corrupt_stored_payload_is_detected_and_asked_again(run, tmp_path):
    run()
    path = tmp_path / "run" / "train" / "beta.safetensors"
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0xFF
    path.write_bytes(bytes(raw))
    report, strategy, grid = run()
    trained = [
        strategy.state.roster.team_of(m.metadata.dst_node_id)
        for m in grid.sent
        if m.metadata.message_type == MSG_TRAIN
    ]
    assert trained == ["beta"]
    assert any("sha256" in r["reason"] for r in report["rejections"])
    assert_merged_from(tmp_path / "run", strategy, ["alpha", "beta", "gamma"])


def _nan_head(reply: Message) -> list[Message]:
    arrays = dict(arrays_from_record(reply.content[HEAD_KEY]))
    k = sorted(arrays)[0]
    arrays[k] = arrays[k].copy()
    arrays[k].flat[0] = np.nan
    reply.content[HEAD_KEY] = record_from_arrays(arrays)
    return [reply]


def test_bad_refitted_head_is_rejected_alone_and_the_scores_stand(run, tmp_path):
    report, _, _ = run(on(BAD, MSG_EVAL, _nan_head), **{"refit-epochs": 1})
    beta = next(t for t in report["teams"] if t["name"] == "beta")
    assert beta["status"] == "ok"
    reasons = [r["reason"] for r in report["rejections"] if r["team"] == "beta"]
    assert any("re-fitted head rejected" in r and "NaN/Inf" in r for r in reasons), reasons
    store = RunDir(tmp_path / "run", readonly=True)
    assert store.exists("eval/medusa/alpha.head.safetensors")
    assert not store.exists("eval/medusa/beta.head.safetensors")
    assert "accuracy" in store.read_json("eval/medusa/beta.json")
