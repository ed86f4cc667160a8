"""The Medusa protocol as typed messages: one request and one reply type per stage.

Both ends speak these types; the Flower edge (``medusa_fed.protocol.flower``) turns them into
Flower records and back, and the in-process transport passes them as they are. One run::

    0 HELLO     HelloRequest  -> HelloReply    base fingerprint, run settings / who the team is
    1 PROBE     ProbeRequest  -> ProbeReply    probe budget, density / top-d sparse delta (fp16)
    2 ASSIGN    (coordinator only: GPA ownership map)
    3 TRAIN     TrainRequest  -> BranchReply   the team's bit-packed mask (none: uncontrolled),
                                               round r > 1 / warm start: the merge so far, head /
                                               owned values only, in mask order (or a dense delta)
      FREE      FreeRequest   -> BranchReply   unmasked fine-tune for the compared post-hoc merges
    4 MERGE     (coordinator only)
    5 EVAL      EvalRequest   -> EvalReply     merged shared weights of one method / metrics only

Every scalar a team reads is a typed field here, with no default on the wire: a request that
lacks one is refused at the edge (``PayloadError``), never filled in with a guess.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import ClassVar, Literal

from medusa_fed.codec.downlink import DownlinkDtype
from medusa_fed.codec.layout import Payload
from medusa_fed.errors import PayloadError
from medusa_fed.training.config import Family, Method, ModelSpec, ProbeScores, TrainConfig

# 2: Settings.class_balance, ProbeRequest.scores, TrainRequest.masked_lr_choices (a site of
# version 1 would ignore them silently; HELLO refuses it instead)
PROTOCOL_VERSION = 2

# Record keys inside a Flower message's RecordDict (medusa_fed.protocol.flower)
CONFIG_KEY = "config"  # ConfigRecord: every scalar field, kebab-case
ARRAYS_KEY = "arrays"  # ArrayRecord: the main payload (mask, delta, merged weights)
START_KEY = "start"  # ArrayRecord: shared weights a round starts from
HEAD_KEY = "head"  # ArrayRecord: a team's own classification head (never merged)
LACK_KEY = "lack"  # ArrayRecord: the weights a team lacks (codec.downlink)
SCORES_KEY = "scores"  # ArrayRecord: a probe's entry scores (probe-scores = fisher)
MASK_KEY = "mask"  # ArrayRecord: the team's mask, when EVAL sends only what the team lacks
METRICS_KEY = "metrics"  # MetricRecord: metrics
# Flower error code of a team site that lacks what a light request relies on (StateMissing): the
# coordinator sends it the full payload instead
ERROR_RESEND = 3

Split = Literal["validation", "test"]


def record(key: str) -> dict[str, str]:
    """Field metadata: the Flower record a payload or metrics field travels in."""
    return {"record": key}


@dataclass(frozen=True)
class Settings:
    """What every request tells a team about the run: the base, the method and the budget."""

    model: str  # bundled model name or a directory every site has
    model_family: Family
    method: Method
    epochs: float  # this request's fine-tuning budget (a probe's, a round's, ...)
    max_steps: int  # > 0 caps the steps (overrides epochs)
    lr: float  # 0 = the method's default
    batch_size: int
    max_length: int
    max_train: int  # the run's cap on training examples (a team's own cap may be lower)
    max_eval: int  # cap on validation and test examples
    seed: int
    eval_before: bool  # also train and score the floor (base + a head trained alone)
    # privacy option (medusa_fed/privacy.py): the site clips each probe / TRAIN upload to this L2
    # norm and adds N(0, (dp_noise x dp_clip)^2) to every value it sends; 0 = off
    dp_clip: float = 0.0
    dp_noise: float = 0.0
    # the caps take every class equally (as far as its examples go) instead of in proportion
    class_balance: bool = False

    def model_spec(self) -> ModelSpec:
        return ModelSpec(source=self.model, family=self.model_family, method=self.method)

    def train_config(self) -> TrainConfig:
        return TrainConfig(
            epochs=self.epochs,
            max_steps=self.max_steps,
            lr=self.lr or None,
            batch_size=self.batch_size,
            max_length=self.max_length,
            seed=self.seed,
        )

    def budget(self, epochs: float, max_steps: int) -> Settings:
        return replace(self, epochs=epochs, max_steps=max_steps)


@dataclass(frozen=True)
class Sender:
    """Who made a payload: the team and the fingerprint of the base it started from."""

    team: str
    fingerprint: str


@dataclass(frozen=True)
class HelloRequest:
    MESSAGE_TYPE: ClassVar[str] = "query.hello"
    settings: Settings
    protocol: int
    fingerprint: str  # the coordinator's base: a team that loaded another base is refused


@dataclass(frozen=True)
class HelloReply:
    team: str
    task: str
    controlled: bool  # false: an uncontrolled branch (refuses masks)
    fingerprint: str
    labels: tuple[str, ...]
    train_size: int
    test_size: int
    protocol: int


@dataclass(frozen=True)
class ProbeRequest:
    MESSAGE_TYPE: ClassVar[str] = "train.probe"
    settings: Settings  # the probe's budget
    density: float  # top-d of each tensor's delta
    scores: ProbeScores  # what ranks the entries: |delta| or Fisher x delta^2 (sent back too)


@dataclass(frozen=True)
class ProbeReply:
    sender: Sender
    delta: Payload = field(metadata=record(ARRAYS_KEY))  # codec sparse delta
    metrics: dict[str, float] = field(default_factory=dict, metadata=record(METRICS_KEY))
    # scores = fisher: each kept entry's score, a codec sparse delta on the delta's indices
    scores: Payload | None = field(default=None, metadata=record(SCORES_KEY))


@dataclass(frozen=True)
class TrainRequest:
    """A round of masked training (``mask`` set) or of an uncontrolled team's free training."""

    MESSAGE_TYPE: ClassVar[str] = "train.finetune"
    settings: Settings  # the round's budget
    round: int
    rounds: int
    branch: str  # where the team keeps this round's head ("train" in the last round)
    head_from: str  # the branch whose head this round continues ("" = a fresh head)
    masked_lr_scale: float  # shared-tensor lr multiplier of masked training
    budget_epochs: float  # the run's whole budget: what the floor head trains for
    budget_max_steps: int
    # the down-link (codec.downlink): with ``lack`` set the start is rebuilt from it, the base
    # and the team's own total kept after ``own_from`` ("probe" = its probe values); its sha256
    # must be ``start_fingerprint``. ``downlink_dtype`` says how ``lack`` is encoded
    own_from: str  # the branch whose own total this round adds to ("" = none: round 1, cold)
    start_fingerprint: str  # "" when no start is sent
    downlink_dtype: DownlinkDtype
    mask: Payload | None = field(default=None, metadata=record(ARRAYS_KEY))
    start: Payload | None = field(default=None, metadata=record(START_KEY))  # merge so far
    lack: Payload | None = field(default=None, metadata=record(LACK_KEY))  # what the team lacks
    head: Payload | None = field(default=None, metadata=record(HEAD_KEY))  # the team's last head
    # "1|2|3": a controlled team trains at each of these masked lr scales (not masked_lr_scale)
    # and keeps the branch its validation split scores best; "" = masked_lr_scale only
    masked_lr_choices: str = ""


@dataclass(frozen=True)
class FreeRequest:
    """An unmasked fine-tune from the base: the branch the post-hoc merges combine."""

    MESSAGE_TYPE: ClassVar[str] = "train.free"
    settings: Settings


@dataclass(frozen=True)
class BranchReply:
    sender: Sender
    delta: Payload = field(metadata=record(ARRAYS_KEY))  # owned values (masked) or dense delta
    head: Payload | None = field(default=None, metadata=record(HEAD_KEY))
    metrics: dict[str, float] = field(default_factory=dict, metadata=record(METRICS_KEY))


@dataclass(frozen=True)
class EvalRequest:
    MESSAGE_TYPE: ClassVar[str] = "evaluate.merged"
    settings: Settings
    method_label: str
    branch: str  # the branch whose head scores this merge ("train" or "baseline")
    refit_epochs: float  # > 0: re-fit the head on the merged encoder first
    refit_lr: float
    split: Split  # "validation" to choose a merge's settings, "test" to report
    # sha256 of the merged weights (codec.downlink.fingerprint). One of three ways they come:
    # ``shared`` (dense); ``lack`` + ``mask`` (rebuilt with the team's own total of ``own_from``);
    # neither: the team holds them already (the last merge it scored)
    fingerprint: str
    own_from: str  # the branch whose own total ``lack`` completes ("" with no ``lack``)
    shared: Payload | None = field(default=None, metadata=record(ARRAYS_KEY))
    lack: Payload | None = field(default=None, metadata=record(LACK_KEY))
    mask: Payload | None = field(default=None, metadata=record(MASK_KEY))
    head: Payload | None = field(default=None, metadata=record(HEAD_KEY))


@dataclass(frozen=True)
class EvalReply:
    metrics: dict[str, float] = field(metadata=record(METRICS_KEY))
    head: Payload | None = field(default=None, metadata=record(HEAD_KEY))  # the re-fitted head


# The range of every metric a team site reports (by name, or as the suffix after a prefix such
# as ``alone_``); a metric not named here need only be finite.
METRIC_RANGES: dict[str, tuple[float, float]] = {
    "accuracy": (0.0, 1.0),
    "macro_f1": (0.0, 1.0),
    "exact_match": (0.0, 1.0),
    "token_f1": (0.0, 1.0),
    "loss": (0.0, math.inf),
    "train_loss": (0.0, math.inf),
    "final_loss": (0.0, math.inf),
    "perplexity": (1.0, math.inf),
    "steps": (0.0, math.inf),
    "seconds": (0.0, math.inf),
    "examples": (0.0, math.inf),
    "num_examples": (0.0, math.inf),
    "tokens": (0.0, math.inf),
}


def metric_range(key: str) -> tuple[float, float] | None:
    """The allowed [low, high] of metric ``key`` (``alone_accuracy`` -> accuracy's), or None."""
    for name, bounds in METRIC_RANGES.items():
        if key == name or key.endswith("_" + name):
            return bounds
    return None


def finite_metrics(metrics: Mapping[str, object]) -> dict[str, float]:
    """``metrics`` as finite floats within each metric's range (:data:`METRIC_RANGES`);
    PayloadError naming the first bad one (every receiver of a reply's metrics checks them with
    this)."""
    out = {}
    for key, value in metrics.items():
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or not math.isfinite(value):  # type: ignore[arg-type]
            raise PayloadError(f"metric {key!r}: expected a finite number, found {value!r}")
        bounds = metric_range(str(key))
        if bounds is not None and not bounds[0] <= float(value) <= bounds[1]:  # type: ignore[arg-type]
            raise PayloadError(
                f"metric {key!r}: expected a value in [{bounds[0]:g}, {bounds[1]:g}], found "
                f"{value!r}"
            )
        out[str(key)] = float(value)  # type: ignore[arg-type]
    return out


Request = HelloRequest | ProbeRequest | TrainRequest | FreeRequest | EvalRequest
Reply = HelloReply | ProbeReply | BranchReply | EvalReply

REPLY_TYPE: dict[type, type] = {
    HelloRequest: HelloReply,
    ProbeRequest: ProbeReply,
    TrainRequest: BranchReply,
    FreeRequest: BranchReply,
    EvalRequest: EvalReply,
}
MSG_HELLO = HelloRequest.MESSAGE_TYPE
MSG_PROBE = ProbeRequest.MESSAGE_TYPE
MSG_TRAIN = TrainRequest.MESSAGE_TYPE
MSG_FREE = FreeRequest.MESSAGE_TYPE
MSG_EVAL = EvalRequest.MESSAGE_TYPE
REQUEST_TYPES: dict[str, type] = {
    t.MESSAGE_TYPE: t for t in (HelloRequest, ProbeRequest, TrainRequest, FreeRequest, EvalRequest)
}

__all__ = [
    "PROTOCOL_VERSION",
    "CONFIG_KEY",
    "ARRAYS_KEY",
    "START_KEY",
    "HEAD_KEY",
    "SCORES_KEY",
    "METRICS_KEY",
    "LACK_KEY",
    "MASK_KEY",
    "ERROR_RESEND",
    "Split",
    "Settings",
    "Sender",
    "HelloRequest",
    "HelloReply",
    "ProbeRequest",
    "ProbeReply",
    "TrainRequest",
    "FreeRequest",
    "BranchReply",
    "EvalRequest",
    "EvalReply",
    "finite_metrics",
    "Request",
    "Reply",
    "REPLY_TYPE",
    "MSG_HELLO",
    "MSG_PROBE",
    "MSG_TRAIN",
    "MSG_FREE",
    "MSG_EVAL",
    "REQUEST_TYPES",
    "record",
]
