"""A Fisher probe's scores as the coordinator checks them (medusa_fed.pipeline.probe.check_scores):
one per kept delta entry, finite, >= 0; anything else is one line naming what was expected."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from medusa_fed import codec
from medusa_fed.deltas import SparseDelta
from medusa_fed.errors import PayloadError
from medusa_fed.pipeline.probe import check_scores

SHAPES = {"a": (4, 3), "b": (5,)}
STATE = SimpleNamespace(shapes=SHAPES, max_payload_bytes=None)
PROBE = {
    "a": SparseDelta((4, 3), torch.tensor([0, 5, 7]), torch.tensor([0.1, -0.2, 0.3])),
    "b": SparseDelta((5,), torch.tensor([2]), torch.tensor([-1.0])),
}


def _scores(**values: list[float]) -> dict:
    return {
        n: SparseDelta(p.shape, p.indices, torch.tensor(values.get(n, [1.0] * len(p.indices))))
        for n, p in PROBE.items()
    }


def test_scores_on_the_probe_s_entries_pass() -> None:
    check_scores(codec.encode_sparse_delta(_scores(a=[0.0, 2.0, 1.0])), PROBE, STATE, "t")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (None, "expected the entries' scores, found none"),
        (
            codec.encode_sparse_delta({"a": _scores()["a"]}),
            "b: missing from the payload; payload rejected",
        ),
        (
            codec.encode_sparse_delta(
                _scores() | {"b": SparseDelta((5,), torch.tensor([3]), torch.tensor([1.0]))}
            ),
            "scores of b: expected the probe delta's indices, found others",
        ),
        (
            codec.encode_sparse_delta(_scores(a=[1.0, -0.5, 1.0])),
            "scores of a: expected values >= 0, found a negative one",
        ),
    ],
)
def test_bad_scores_are_refused_with_one_line(payload: dict | None, message: str) -> None:
    with pytest.raises(PayloadError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_scores(payload, PROBE, STATE, "t")  # type: ignore[arg-type]


def test_non_finite_scores_are_refused() -> None:
    payload = codec.encode_sparse_delta(_scores())
    key = next(k for k in payload if k.startswith("a") and k.endswith("val"))
    payload[key] = payload[key].copy()
    payload[key][1] = float("nan")
    with pytest.raises(PayloadError, match="finite"):
        check_scores(payload, PROBE, STATE, "t")  # type: ignore[arg-type]
