"""Progress events (medusa_fed.progress) and what ``medusa simulate`` renders from them."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from medusa_fed import progress
from medusa_fed.cli.progress_view import ProgressView, StageView, human_bytes


def test_events_go_to_the_installed_reporter_else_to_the_env_file(tmp_path, monkeypatch):
    got: list[dict] = []
    previous = progress.use(got.append)
    try:
        progress.emit("step", what="probe movie", step=1, total=4, loss=0.5)
    finally:
        progress.use(previous)
    assert got[0]["kind"] == "step" and got[0]["what"] == "probe movie" and "t" in got[0]
    path = tmp_path / "p.jsonl"
    monkeypatch.setenv(progress.ENV, str(path))
    progress.emit("stage", stage="hello", state="start")
    progress.emit("stage", stage="hello", state="done", seconds=1.0, sent=0, received=0)
    with open(path, "ab") as f:
        f.write(b'{"kind": "step", "what": "half a li')  # a line still being written
    events, offset = progress.read_new(str(path), 0)
    assert [e["state"] for e in events] == ["start", "done"]
    assert progress.read_new(str(path), offset) == ([], offset)
    monkeypatch.delenv(progress.ENV)
    assert progress.current() is None
    progress.emit("stage", stage="x", state="start")  # no reporter: dropped, no error


def test_a_failing_reporter_never_stops_the_caller():
    def broken(event: dict) -> None:
        raise RuntimeError("display gone")

    previous = progress.use(broken)
    try:
        progress.emit("step", what="train movie", step=1, total=1, loss=0.1)
    finally:
        progress.use(previous)


def test_not_a_terminal_prints_one_line_per_finished_stage():
    out = io.StringIO()
    with ProgressView(out) as view:
        view({"kind": "stage", "stage": "probe", "state": "start", "t": 0.0, "teams": ["a"]})
        for step in range(1, 5):
            view({"kind": "step", "what": "probe a", "step": step, "total": 4, "loss": 0.5,
                  "t": float(step)})  # fmt: skip
        view({"kind": "stage", "stage": "probe", "state": "done", "t": 5.0, "seconds": 65.0,
              "sent": 0, "received": 3 * 1024 * 1024})  # fmt: skip
    assert out.getvalue() == "probe      done in    1:05  sent 0 B, received 3.0 MB\n"


def test_a_team_row_estimates_the_time_left_from_its_step_rate():
    stage = StageView(name="train")
    for step, t in ((1, 10.0), (2, 12.0), (3, 14.0)):
        stage.step({"what": "train-round1 movie", "step": step, "total": 10, "loss": 1.0, "t": t})
    row = stage.teams["movie"]
    assert row.what == "train-round1" and row.remaining() == pytest.approx(14.0)
    stage.step({"what": "eval medusa movie", "step": 1, "total": 3, "loss": None, "t": 20.0})
    assert stage.teams["movie"].what == "eval medusa" and stage.teams["movie"].remaining() is None
    assert human_bytes(512) == "512 B" and human_bytes(1536) == "1.5 KB"


def test_the_live_display_renders_without_a_terminal(tmp_path: Path):
    """The rich display (forced on) draws the stage and the team rows and leaves the finished
    stage lines; a run's events replayed from a file give the same lines."""
    pytest.importorskip("rich")
    out = io.StringIO()
    events = [
        {"kind": "stage", "stage": "train", "state": "start", "t": 0.0, "teams": ["a", "b"]},
        {"kind": "step", "what": "train-round1 a", "step": 2, "total": 8, "loss": 0.25, "t": 1.0},
        {"kind": "stage", "stage": "train", "state": "done", "t": 2.0, "seconds": 2.0,
         "sent": 10, "received": 20},
    ]  # fmt: skip
    with ProgressView(out, live=True) as view:
        for e in events:
            view(e)
        rendered = view._renderable()
    assert "train" in out.getvalue() and "done in" in out.getvalue()
    assert rendered is not None
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    assert progress.read_new(str(path), 0)[0] == events


def test_own_warnings_of_a_flower_process_reach_the_display(tmp_path, monkeypatch):
    import logging

    path = tmp_path / "p.jsonl"
    monkeypatch.setenv(progress.ENV, str(path))
    progress.relay_warnings()
    progress.relay_warnings()  # once only
    try:
        logging.getLogger("medusa_fed.pipeline.state").warning("probe: team %r left out", "b")
        logging.getLogger("ray").warning("not ours")
    finally:
        logging.getLogger().removeHandler(progress._RELAY)
    events, _ = progress.read_new(str(path), 0)
    assert [e["message"] for e in events] == ["probe: team 'b' left out"]
    out = io.StringIO()
    with ProgressView(out) as view:
        view(events[0])
    assert out.getvalue() == "warning: probe: team 'b' left out\n"
