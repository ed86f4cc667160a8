"""The typed protocol and its Flower edge: every message survives the round trip exactly, and a
record that lacks a field, carries the wrong type or a non-finite metric is refused by name."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord, MetricRecord

from medusa_fed.errors import PayloadError
from medusa_fed.protocol import (
    ARRAYS_KEY,
    CONFIG_KEY,
    METRICS_KEY,
    REPLY_TYPE,
    REQUEST_TYPES,
    BranchReply,
    EvalReply,
    EvalRequest,
    FreeRequest,
    HelloReply,
    HelloRequest,
    ProbeReply,
    ProbeRequest,
    Sender,
    Settings,
    TrainRequest,
)
from medusa_fed.protocol.flower import from_content, to_content

SETTINGS = Settings("m", "encoder-classifier", "lora", 1.5, 0, 0.0, 8, 64, 100, 50, 3, True)
ARRAYS = {"w::values": np.arange(6, dtype=np.float16), "w::idx": np.arange(6, dtype=np.uint32)}
MESSAGES = [
    HelloRequest(SETTINGS, 1, "f" * 64),
    HelloReply("legal", "legal.csv", False, "f" * 64, ("neg", "pos"), 10, 5, 1),
    ProbeRequest(SETTINGS, 0.2, "fisher"),
    ProbeReply(Sender("legal", "f" * 64), ARRAYS, {"loss": 0.5}),
    TrainRequest(
        SETTINGS,
        2,
        2,
        "train",
        "train-round1",
        3.0,
        2.0,
        0,
        "train-round1",
        "f" * 64,
        "bf16",
        mask=ARRAYS,
        lack=ARRAYS,
        head=ARRAYS,
        masked_lr_choices="1|2",
    ),
    FreeRequest(SETTINGS),
    BranchReply(Sender("legal", "f" * 64), ARRAYS, None, {"alone_accuracy": 0.75}),
    EvalRequest(
        SETTINGS, "ties:density=0.2", "baseline", 1.0, 1e-3, "validation", "f" * 64, "", ARRAYS
    ),
    EvalRequest(
        SETTINGS, "medusa", "train", 0.0, 1e-3, "test", "f" * 64, "train", lack=ARRAYS, mask=ARRAYS
    ),
    EvalReply({"accuracy": 1.0}, ARRAYS),
    ProbeReply(Sender("legal", "f" * 64), ARRAYS, {"loss": 0.5}, scores=ARRAYS),  # fisher
]


def _equal(a: object, b: object) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if hasattr(a, "__dataclass_fields__"):
        return type(a) is type(b) and all(
            _equal(getattr(a, f), getattr(b, f)) for f in a.__dataclass_fields__
        )
    return a == b


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips_exactly(message):
    # Execute
    back = from_content(type(message), to_content(message))
    # Assert
    assert _equal(back, message)


def test_every_request_has_a_message_type_and_a_reply_type():
    assert set(REQUEST_TYPES.values()) == set(REPLY_TYPE)
    assert REQUEST_TYPES["train.probe"] is ProbeRequest


def test_a_missing_or_mistyped_field_is_refused_by_name():
    content = to_content(MESSAGES[1])  # a HelloReply
    facts = dict(content[CONFIG_KEY])
    del facts["controlled"]
    content[CONFIG_KEY] = ConfigRecord(facts)
    with pytest.raises(PayloadError, match=r"HelloReply.controlled: expected config key"):
        from_content(HelloReply, content)
    content[CONFIG_KEY] = ConfigRecord({**facts, "controlled": "yes"})
    with pytest.raises(PayloadError, match=r"controlled: expected bool, found 'yes'"):
        from_content(HelloReply, content)
    request = to_content(MESSAGES[7])
    config = dict(request[CONFIG_KEY])
    request[CONFIG_KEY] = ConfigRecord({**config, "split": "train"})
    with pytest.raises(PayloadError, match=r"split: expected one of \('validation', 'test'\)"):
        from_content(EvalRequest, request)
    request[CONFIG_KEY] = ConfigRecord({**config, "lr": float("nan")})
    with pytest.raises(PayloadError, match="lr: expected a finite number"):
        from_content(EvalRequest, request)


def test_a_non_finite_metric_or_a_missing_payload_is_refused():
    content = to_content(MESSAGES[6])  # a BranchReply
    content[METRICS_KEY] = MetricRecord({"alone_accuracy": float("nan")})
    with pytest.raises(PayloadError, match="metric 'alone_accuracy': expected a finite number"):
        from_content(BranchReply, content)
    content = to_content(MESSAGES[6])
    del content[ARRAYS_KEY]
    with pytest.raises(PayloadError, match="BranchReply.delta: expected a 'arrays' record"):
        from_content(BranchReply, content)
