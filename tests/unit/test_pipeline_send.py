"""How a stage sorts what a transport brought back (medusa_fed.pipeline.state.send), with a small
fake transport instead of teams: the good reply is kept, everything else is rejected with its
reason and nothing is raised."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest

from medusa_fed.pipeline.state import Roster, RunState, send
from medusa_fed.pipeline.transport import DirectTransport, Failure
from medusa_fed.protocol import FreeRequest, HelloReply, ProbeReply, Reply, Request, Sender
from medusa_fed.run_config import RunConfig
from medusa_fed.rundir import RunDir
from medusa_fed.training import load_base
from medusa_fed.training.config import ModelSpec


class FakeTransport:
    """Answers each exchange with a fixed list of (node, reply or failure)."""

    def __init__(self, answers: list[tuple[int, Reply | Failure]]) -> None:
        self.answers = answers
        self.asked: Mapping[int, Request] = {}

    def nodes(self) -> list[int]:
        return [1, 2, 3, 4]

    def exchange(self, stage: str, requests: Mapping[int, Request], timeout_s: float):  # type: ignore[no-untyped-def]
        self.asked = requests
        return self.answers


@pytest.fixture
def state(tiny_bert: Path, tmp_path: Path) -> RunState:
    config = RunConfig(model=str(tiny_bert), out_dir=str(tmp_path), stage_timeout_s=5)
    s = RunState(config, load_base(ModelSpec(source=str(tiny_bert))), RunDir(tmp_path))
    hello = HelloReply("t", "task", True, s.fingerprint, ("a", "b"), 1, 1, 1)
    s.roster = Roster(
        node_of={"a": 1, "b": 2, "c": 3, "d": 4},
        hello={t: hello for t in "abcd"},
    )
    return s


def test_send_keeps_good_replies_and_rejects_the_rest(state: RunState) -> None:
    # Prepare
    good = ProbeReply(Sender("a", state.fingerprint), {})
    transport = FakeTransport(
        [
            (1, good),
            (1, ProbeReply(Sender("a", "x"), {})),  # a duplicate: the first one is kept
            (2, Failure("error reply: DataError: no file")),
            (3, HelloReply("c", "t", True, "f", (), 1, 1, 1)),  # the wrong kind of reply
            (99, good),  # a node nobody asked
        ]
    )
    # Execute
    got = send(state, transport, "probe", lambda t: FreeRequest(state.settings()), ProbeReply)
    # Assert
    assert got == {"a": good}
    assert sorted(transport.asked) == [1, 2, 3, 4]
    assert state.roster.active == ["a"]  # b failed, c sent a HelloReply, d never answered
    reasons = {r["team"]: r["reason"] for r in state.run_dir.rejections()}
    assert reasons["a"] == "duplicated reply (the first one is kept)"
    assert reasons["b"] == "error reply: DataError: no file"
    assert reasons["c"] == "expected a ProbeReply, found a HelloReply"
    assert reasons["d"] == "no reply within 5 s"


def test_direct_transport_reports_a_raising_handler_as_a_failure() -> None:
    # Prepare
    def broken(request: Request) -> Reply:
        raise ValueError("boom")

    transport = DirectTransport({1: broken}, silent={2})
    # Execute
    answers = transport.exchange("probe", {1: FreeRequest.__new__(FreeRequest), 2: None}, 1.0)  # type: ignore[dict-item]
    # Assert: node 1's failure carries the reason, silent node 2 is absent
    assert len(answers) == 1 and answers[0][0] == 1
    failure = answers[0][1]
    assert isinstance(failure, Failure) and failure.reason.startswith(
        "error reply: ValueError: boom"
    )
