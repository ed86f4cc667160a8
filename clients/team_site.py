"""One team's site: its private data, the base model it loaded, and what it does in each stage.

Plain Python over the training engine: :meth:`TeamSite.handle` takes a typed request of
``medusa_fed.protocol`` and returns its typed reply, so the ClientApp (Flower) and the in-process
transport serve the same code (no Flower types beyond ``RecordDict`` for the node's state).
The base model and the team's data are loaded once per process and cached; the team's
classification heads (one per branch) live in the node's Flower state between TRAIN and EVAL, so
evaluation of a merged model uses the head the team trained with it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch
from flwr.app import Context, RecordDict

from medusa_fed import progress
from medusa_fed.codec import (
    decode_dense,
    decode_mask,
    encode_dense,
    encode_owned_values,
    encode_sparse_delta,
)
from medusa_fed.codec.downlink import fingerprint
from medusa_fed.codec.layout import Payload
from medusa_fed.codec.records import arrays_from_record, record_from_arrays
from medusa_fed.deltas import StateDict
from medusa_fed.errors import ConfigError, MedusaError, PayloadError
from medusa_fed.privacy import private_delta, private_probe
from medusa_fed.protocol import (
    PROTOCOL_VERSION,
    BranchReply,
    EvalReply,
    EvalRequest,
    FreeRequest,
    HelloReply,
    HelloRequest,
    ProbeReply,
    ProbeRequest,
    Reply,
    Request,
    Sender,
    Settings,
    TrainRequest,
)
from medusa_fed.team_config import TeamConfig, simulated_team
from medusa_fed.training.branch import (
    BranchResult,
    finetune,
    num_labels_of,
    probe,
    prompter_of,
    refit_head,
)
from medusa_fed.training.config import ModelSpec, TrainConfig, parse_lr_scales
from medusa_fed.training.data import TaskData, TaskSpec, describe, load_task
from medusa_fed.training.evaluate import evaluate
from medusa_fed.training.models import BaseModel, load_base

from . import downlink

log = logging.getLogger(__name__)

_BASES: dict[ModelSpec, BaseModel] = {}
_DATA: dict[tuple[Any, ...], TaskData] = {}


def base_for(spec: ModelSpec) -> BaseModel:
    """The base model for ``spec``, loaded once per process."""
    if spec not in _BASES:
        _BASES[spec] = load_base(spec)
    return _BASES[spec]


def _head_key(branch: str) -> str:
    return f"medusa-head-{branch}"


@dataclass
class TeamSite:
    """A team's side of the protocol.

    Parameters
    ----------
    team : TeamConfig
        The team's own settings (node config): its data, and whether it accepts masks.
    state : RecordDict | None (default: None)
        The node's persistent Flower state (heads between TRAIN and EVAL); None keeps them in a
        private dict (tests, scripts).
    """

    team: TeamConfig
    state: RecordDict | None = None

    def __post_init__(self) -> None:
        if self.state is None:
            self.state = RecordDict()

    # ---------------------------------------------------------------- helpers
    def data(self, settings: Settings) -> TaskData:
        """The team's data, split with the run's seed and capped by the run's and team's limits."""
        # labelled unless the team names no label column (raw text for a causal LM); a causal LM
        # takes a labelled task as instructions; a .jsonl of chat messages or prompt/completion
        # rows is an instruction task whatever the columns say (data-format, load_task)
        kind = "classification" if self.team.label_column else "language-modeling"
        caps = [settings.max_train or None, self.team.max_train]
        max_train = min((c for c in caps if c), default=None)
        max_eval = settings.max_eval or None
        key = (self.team, kind, max_train, max_eval, settings.class_balance, settings.seed)
        if key not in _DATA:
            _DATA[key] = load_task(
                TaskSpec(
                    source=self.team.task,
                    kind=kind,  # type: ignore[arg-type]
                    text_columns=self.team.text_columns,
                    label_column=self.team.label_column if kind == "classification" else None,
                    data_format=self.team.data_format,
                    max_train=max_train,
                    max_validation=max_eval,
                    max_test=max_eval,
                    balance_classes=settings.class_balance,
                    seed=settings.seed,
                )
            )
        return _DATA[key]

    @staticmethod
    def base(settings: Settings) -> BaseModel:
        return base_for(settings.model_spec())

    def _keep_head(self, branch: str, head: StateDict) -> None:
        assert self.state is not None
        self.state[_head_key(branch)] = record_from_arrays(encode_dense(head))

    def kept_head(self, branch: str) -> StateDict | None:
        assert self.state is not None
        key = _head_key(branch)
        if key not in self.state:
            return None
        return decode_dense(arrays_from_record(self.state[key]), None)  # type: ignore[arg-type]

    def round_head(self, request: TrainRequest) -> StateDict | None:
        """The head a multi-round TRAIN continues (``head_from`` names the previous round's
        branch): the one this site kept, else the copy the coordinator sent; None in round 1 (a
        fresh head). A site that holds neither cannot continue its branch."""
        previous = request.head_from
        if not previous:
            return None
        head = self.kept_head(previous)
        if head is None and request.head is not None:
            head = decode_dense(request.head, None)
        classifier = request.settings.model_family == "encoder-classifier"  # a causal LM: none
        if head is None and previous == "probe" and classifier:  # the probe head never leaves
            log.warning(
                "team %r: the probe's head is gone (site restarted?); round 1 starts a fresh head",
                self.team.name,
            )
            return None
        if head is None and request.settings.model_family == "encoder-classifier":
            raise MedusaError(
                f"team {self.team.name!r}: round {request.round} continues the head of "
                f"{previous!r}, which this site no longer holds (restarted?) and the coordinator "
                "did not send (the team does not share its head: share-head = false)"
            )
        return head

    def sender(self, settings: Settings) -> Sender:
        """Who made a payload: this team and the fingerprint of the base it started from."""
        return Sender(self.team.name, self.base(settings).fingerprint())

    # ---------------------------------------------------------------- stages
    def handle(self, request: Request) -> Reply:
        """Answer one request of the protocol (every transport calls this)."""
        if isinstance(request, HelloRequest):
            return self.hello(request)
        if isinstance(request, ProbeRequest):
            return self.probe(request)
        if isinstance(request, TrainRequest):
            return self.train(request)
        if isinstance(request, FreeRequest):
            return self.free(request)
        if isinstance(request, EvalRequest):
            return self.evaluate(request)
        raise MedusaError(f"expected a request of medusa_fed.protocol, found {type(request)}")

    def hello(self, request: HelloRequest) -> HelloReply:
        """Load the base named by the coordinator and describe this team (no data leaves)."""
        if request.protocol != PROTOCOL_VERSION:
            raise ConfigError(
                f"coordinator speaks protocol {request.protocol!r}, this team site "
                f"speaks {PROTOCOL_VERSION}; install the same medusa-fed version at both ends"
            )
        base = self.base(request.settings)
        data = self.data(request.settings)
        num_labels_of(base, data)  # task and model family must agree
        sizes = describe(data)
        return HelloReply(
            team=self.team.name,
            task=str(sizes.get("name", data.name)),
            controlled=self.team.controlled,
            fingerprint=base.fingerprint(),
            labels=tuple(data.labels) or ("-",),
            train_size=len(data.train),
            test_size=len(data.test),
            protocol=PROTOCOL_VERSION,
        )

    def probe(self, request: ProbeRequest) -> ProbeReply:
        """The probe: a short unmasked fine-tune from the base, top-d of each tensor's delta."""
        settings = request.settings
        if request.scores == "fisher" and settings.dp_clip > 0:
            raise PayloadError(
                f"team {self.team.name!r}: the probe asked for Fisher scores under the privacy "
                "option, which does not noise them; expected scores = delta with dp-clip > 0"
            )
        base = self.base(settings)
        result = probe(
            base,
            self.data(settings),
            self._train_config(settings),
            density=request.density,
            scores=request.scores,
        )
        if result.head:  # a warm-started round 1 continues it (warm-start = true)
            self._keep_head("probe", result.head)
        sparse = result.sparse
        if settings.dp_clip > 0:  # the privacy option: clip + Gaussian noise on the values sent
            sparse = private_probe(sparse, settings.dp_clip, settings.dp_noise)
        payload = encode_sparse_delta(sparse)
        assert self.state is not None
        downlink.keep_probe(self.state, payload)  # a warm start's own total begins with it
        return ProbeReply(
            sender=self.sender(settings),
            delta=payload,
            metrics={k: float(v) for k, v in result.metrics.items()},
            scores=encode_sparse_delta(result.scores) if result.scores is not None else None,
        )

    def train(self, request: TrainRequest) -> BranchReply:
        """One TRAIN round: masked (owned values back, in mask order) or, for an uncontrolled
        team, free (its dense delta back)."""
        assert self.state is not None
        try:  # checked before any work
            choices = parse_lr_scales(request.masked_lr_choices)
        except ValueError as exc:
            raise PayloadError(
                f"team {self.team.name!r}: round {request.round}'s masked-lr-choices: {exc}"
            ) from None
        base = self.base(request.settings)
        mask = decode_mask(request.mask, base.shapes) if request.mask is not None else None
        start = decode_dense(request.start, base.shapes) if request.start is not None else None
        if request.lack is not None:  # only what the team lacks: rebuilt with its own total
            if mask is None:
                raise PayloadError(
                    f"team {self.team.name!r}: round {request.round} sent the values this team "
                    "lacks without its mask; expected both (or a dense start)"
                )
            start = downlink.rebuild(
                self.state,
                self.team.name,
                f"round {request.round}'s start",
                request.lack,
                base.shared_state(),
                mask,
                request.own_from,
                request.downlink_dtype,
                request.start_fingerprint,
            )
        head = self.round_head(request)
        result = self.finetune(
            request.settings,
            mask,
            branch=request.branch,
            start=start,
            head=head,
            shared_lr_scale=request.masked_lr_scale,
            budget=(request.budget_epochs, request.budget_max_steps),
            lr_choices=choices,
        )
        settings = request.settings
        if settings.dp_clip > 0:  # the privacy option: clip + Gaussian noise on the values sent
            noised = private_delta(result.delta, mask, settings.dp_clip, settings.dp_noise)
            result = replace(result, delta=noised)
        payload = encode_owned_values(result.delta, mask) if mask is not None else None
        if mask is not None and payload is not None:  # the next start is rebuilt with it
            downlink.keep_own_total(self.state, request.own_from, request.branch, mask, payload)
        return self._branch_reply(settings, payload, result)

    def free(self, request: FreeRequest) -> BranchReply:
        """An unmasked fine-tune from the base (the compared post-hoc merges' branch)."""
        result = self.finetune(request.settings, None, branch="baseline")
        return self._branch_reply(request.settings, None, result)

    def _branch_reply(
        self, settings: Settings, payload: Payload | None, result: BranchResult
    ) -> BranchReply:
        return BranchReply(
            sender=self.sender(settings),
            delta=payload if payload is not None else encode_dense(result.delta),
            head=encode_dense(result.head) if self.team.share_head and result.head else None,
            metrics=dict(result.metrics),
        )

    def finetune(
        self,
        settings: Settings,
        mask: Mapping[str, torch.Tensor] | None,
        branch: str,
        start: Mapping[str, torch.Tensor] | None = None,
        head: Mapping[str, torch.Tensor] | None = None,
        shared_lr_scale: float = 1.0,
        budget: tuple[float, int] | None = None,
        lr_choices: tuple[float, ...] = (),
    ) -> BranchResult:
        """(Masked) fine-tune from ``start`` (default: the base); metrics of the team alone.

        Masked with ``lr_choices``: one fine-tune per shared-tensor lr scale (in place of
        ``shared_lr_scale``), keeping the one whose branch scores best on the team's validation
        split (:meth:`_choose_lr_scale`).

        The returned metrics carry ``alone_*`` (this branch on the team's test split) and, when
        the run asks for it (``eval_before``), ``before_*``: the base encoder with a head trained
        alone for the whole budget (``budget``: epochs, max steps; default this request's), the
        floor every merge must beat.
        """
        base = self.base(settings)
        data = self.data(settings)
        cfg = self._train_config(settings)
        begin = dict(start) if start is not None else base.shared_state()
        desc = f"{branch} {self.team.name}"
        chosen: dict[str, float] = {}
        if mask is not None and lr_choices:
            result, chosen = self._choose_lr_scale(
                base, data, cfg, mask, (start, begin), head, lr_choices
            )
        else:  # masked: owned elements only, at the coordinator's larger shared-tensor step
            step = replace(cfg, shared_lr_scale=shared_lr_scale) if mask is not None else cfg
            result = finetune(base, data, step, mask=mask, start=start, head=head, desc=desc)
        metrics = {f"train_{k}": float(v) for k, v in result.metrics.items()} | chosen
        tuned = {n: begin[n] + d for n, d in result.delta.items()}
        alone = self._test(base, data, tuned, result.head, cfg, f"alone {self.team.name}")
        metrics |= {f"alone_{k}": float(v) for k, v in alone.items()}
        if settings.eval_before and self.kept_head("floor") is None:
            floor_head: StateDict = {}  # a causal LM's floor is the untuned model itself
            if base.is_classifier:
                epochs, max_steps = budget or (cfg.epochs, cfg.max_steps)
                whole = replace(cfg, epochs=epochs, max_steps=max_steps)  # a round is part of it
                desc = f"floor {self.team.name}"
                floor_head = finetune(base, data, whole, head_only=True, desc=desc).head
            self._keep_head("floor", floor_head)
            before = self._test(base, data, None, floor_head, cfg, f"floor {self.team.name}")
            metrics |= {f"before_{k}": float(v) for k, v in before.items()}
        if result.head:
            self._keep_head(branch, result.head)
        return BranchResult(result.delta, result.head, metrics)

    def _choose_lr_scale(
        self,
        base: BaseModel,
        data: TaskData,
        cfg: TrainConfig,
        mask: Mapping[str, torch.Tensor],
        starts: tuple[Mapping[str, torch.Tensor] | None, StateDict],
        head: Mapping[str, torch.Tensor] | None,
        scales: tuple[float, ...],
    ) -> tuple[BranchResult, dict[str, float]]:
        """One masked fine-tune per shared-tensor lr scale from ``starts`` (the round's start as
        sent, None = the base; and its weights). Returns the one whose branch scores best on the
        team's validation split (accuracy; minus the loss for raw text; ties: the first listed)
        and the metrics ``train_lr_scale`` / ``train_lr_scale_validation``. Only the kept result
        is held beside the one being trained."""
        start, begin = starts
        best: tuple[float, float, BranchResult] | None = None
        for scale in scales:
            step = replace(cfg, shared_lr_scale=scale)
            name = f"{self.team.name} at masked lr x{scale:g}"
            result = finetune(base, data, step, mask=mask, start=start, head=head, desc=name)
            tuned = {n: begin[n] + d for n, d in result.delta.items()}
            got = self._test(base, data, tuned, result.head, cfg, f"val {name}", "validation")
            score = got["accuracy"] if "accuracy" in got else -got["loss"]
            log.info("%s: validation score %.4f", name, score)
            if best is None or score > best[0]:
                best = (score, scale, result)
        assert best is not None  # scales is not empty
        return best[2], {"train_lr_scale": best[1], "train_lr_scale_validation": best[0]}

    @staticmethod
    def _test(
        base: BaseModel,
        data: TaskData,
        shared: StateDict | None,
        head: StateDict,
        cfg: TrainConfig,
        desc: str,
        split: str = "test",
    ) -> dict[str, float]:
        """Metrics of base + ``shared`` + ``head`` on the team's ``split`` (default: test)."""
        return evaluate(
            base,
            shared,
            head or None,
            data.splits()[split],
            num_labels=num_labels_of(base, data),
            batch_size=32,
            max_length=cfg.max_length,
            desc=desc,
            prompter=prompter_of(base, data),
            device=cfg.device,
        )

    def _train_config(self, settings: Settings) -> TrainConfig:
        """The request's budget, on this site's device (node config ``device``)."""
        return replace(settings.train_config(), device=self.team.device)

    def evaluate(self, request: EvalRequest) -> EvalReply:
        """Score merged shared weights with the head this team trained in ``request.branch``, on
        the requested split.

        With ``refit_epochs`` > 0 the head is first trained further on the frozen merged encoder
        (the team's training split, ``refit_lr``); the reply carries that head if the team shares
        heads."""
        settings = request.settings
        base = self.base(settings)
        data = self.data(settings)
        shared = self.merged_weights(request, base)
        kept = self.kept_head(request.branch)
        head = kept
        if head is None and request.head is not None:
            head = decode_dense(request.head, None)
        labels = num_labels_of(base, data)
        if labels is not None and head is None:
            raise MedusaError(
                f"team {self.team.name!r} has no {request.branch} head to evaluate with: this "
                "site did not run that stage in this process and the coordinator sent none"
            )
        refit = None
        if request.refit_epochs > 0 and labels is not None:
            cfg = replace(
                self._train_config(settings),
                epochs=request.refit_epochs,
                max_steps=0,
                lr=request.refit_lr,
            )
            desc = f"refit {request.method_label} {self.team.name}"
            refit = refit_head(base, data, cfg, shared, head, desc)
            head = refit
        metrics = evaluate(
            base,
            shared,
            head,
            getattr(data, request.split),
            num_labels=labels,
            batch_size=32,
            max_length=settings.max_length,
            desc=f"eval {request.method_label} {self.team.name}",
            prompter=prompter_of(base, data),
            device=self.team.device,
        )
        sent = encode_dense(refit) if refit is not None and self.team.share_head else None
        downlink.hold(self.team.name, request.method_label, shared, request.fingerprint)
        return EvalReply(metrics=metrics, head=sent)

    def merged_weights(self, request: EvalRequest, base: BaseModel) -> StateDict:
        """The merged weights of an EVAL: sent dense, rebuilt from what the team lacks, or the
        ones it scored last; their fingerprint must be the coordinator's."""
        assert self.state is not None
        name, label = self.team.name, request.method_label
        if request.shared is not None:
            shared = decode_dense(request.shared, base.shapes)
            if (found := fingerprint(shared)) != request.fingerprint:
                raise PayloadError(
                    f"team {name!r}: {label} merged weights arrived with fingerprint "
                    f"{found[:12]}..., expected {request.fingerprint[:12]}...; not scored"
                )
            return shared
        if request.lack is None:
            return downlink.held(name, label, request.fingerprint)
        if request.mask is None:
            raise PayloadError(
                f"team {name!r}: {label} sent the values this team lacks without its mask; "
                "expected both (or the dense weights)"
            )
        return downlink.rebuild(
            self.state,
            name,
            f"{label} merged weights",
            request.lack,
            base.shared_state(),
            decode_mask(request.mask, base.shapes),
            request.own_from,
            "fp32",  # EVAL scores exactly what was merged
            request.fingerprint,
        )


def show_progress() -> None:
    """In a process with no logging set up (a Ray actor, a SuperNode's ClientApp), log medusa's
    INFO lines (training steps, evaluation) so the site's progress is visible."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(
            level=logging.WARNING,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            datefmt="%H:%M:%S",
        )
    medusa = logging.getLogger("medusa_fed")
    if medusa.level == logging.NOTSET:
        medusa.setLevel(logging.INFO)
    progress.relay_warnings()  # a simulation's display shows this site's warnings


def site_for(context: Context) -> TeamSite:
    """The TeamSite of a Flower node: its node config names the team's data and choices."""
    show_progress()
    node = context.node_config
    if "task" not in node and "partition-id" in node:  # a simulation's virtual SuperNode
        return TeamSite(simulated_team(node, context.run_config), context.state)
    return TeamSite(TeamConfig.from_node_config(node), context.state)
