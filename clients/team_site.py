"""One team's site: its private data, the base model it loaded, and what it does in each stage.

Plain Python over the training engine (no Flower types beyond ``RecordDict`` for the node's
state), so the ClientApp stays a thin translation layer. The base model and the team's data are
loaded once per process and cached; the team's classification heads (one per branch) live in the
node's Flower state between TRAIN and EVAL, so evaluation of a merged model uses the head the team
trained with it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch
from flwr.app import Context, RecordDict

from medusa_fed.codec import decode_dense, encode_dense
from medusa_fed.codec.records import arrays_from_record, record_from_arrays
from medusa_fed.deltas import SparseDelta, StateDict
from medusa_fed.errors import ConfigError, MedusaError
from medusa_fed.protocol import PROTOCOL_VERSION
from medusa_fed.team_config import TeamConfig
from medusa_fed.training.branch import (
    BranchResult,
    finetune,
    num_labels_of,
    probe,
    refit_head,
)
from medusa_fed.training.config import ModelSpec, TrainConfig
from medusa_fed.training.data import TaskData, TaskSpec, describe, load_task
from medusa_fed.training.evaluate import evaluate
from medusa_fed.training.models import BaseModel, load_base

log = logging.getLogger(__name__)

_BASES: dict[ModelSpec, BaseModel] = {}
_DATA: dict[tuple[Any, ...], TaskData] = {}
SPEC_KEYS = ("model", "model-family", "method")


def spec_from_settings(settings: Mapping[str, Any]) -> ModelSpec:
    """The ModelSpec the coordinator names in a request (every request carries it)."""
    missing = [k for k in SPEC_KEYS if k not in settings]
    if missing:
        raise ConfigError(f"request names no {', '.join(missing)}; expected {SPEC_KEYS}")
    return ModelSpec(
        source=str(settings["model"]), family=settings["model-family"], method=settings["method"]
    )


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
    def data(self, settings: Mapping[str, Any]) -> TaskData:
        """The team's data, split with the run's seed and capped by the run's and team's limits."""
        family = settings.get("model-family", "encoder-classifier")
        kind = "classification" if family == "encoder-classifier" else "language-modeling"
        caps = [int(settings.get("max-train", 0)) or None, self.team.max_train]
        max_train = min((c for c in caps if c), default=None)
        max_eval = int(settings.get("max-eval", 0)) or None
        seed = int(settings.get("seed", 0))
        key = (self.team, kind, max_train, max_eval, seed)
        if key not in _DATA:
            _DATA[key] = load_task(
                TaskSpec(
                    source=self.team.task,
                    kind=kind,  # type: ignore[arg-type]
                    text_columns=self.team.text_columns,
                    label_column=self.team.label_column if kind == "classification" else None,
                    max_train=max_train,
                    max_validation=max_eval,
                    max_test=max_eval,
                    seed=seed,
                )
            )
        return _DATA[key]

    @staticmethod
    def train_config(settings: Mapping[str, Any]) -> TrainConfig:
        """The budget and optimizer the coordinator asked for (0 / absent = the default)."""
        return TrainConfig(
            epochs=float(settings.get("epochs", 1.0)),
            max_steps=int(settings.get("max-steps", 0)),
            lr=float(settings.get("lr", 0.0)) or None,
            batch_size=int(settings.get("batch-size", 16)),
            max_length=int(settings.get("max-length", 128)),
            seed=int(settings.get("seed", 0)),
        )

    def shapes_for(self, settings: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
        return base_for(spec_from_settings(settings)).shapes

    def _keep_head(self, branch: str, head: StateDict) -> None:
        assert self.state is not None
        self.state[_head_key(branch)] = record_from_arrays(encode_dense(head))

    def kept_head(self, branch: str) -> StateDict | None:
        assert self.state is not None
        key = _head_key(branch)
        if key not in self.state:
            return None
        return decode_dense(arrays_from_record(self.state[key]), None)  # type: ignore[arg-type]

    def round_head(
        self, settings: Mapping[str, Any], sent: StateDict | None = None
    ) -> StateDict | None:
        """The head a multi-round TRAIN continues (``settings['head-from']`` names the previous
        round's branch): the one this site kept, else the copy the coordinator sent; None in
        round 1 (a fresh head). A site that holds neither cannot continue its branch."""
        previous = str(settings.get("head-from", ""))
        if not previous:
            return None
        head = self.kept_head(previous)
        if head is None:
            head = sent
        if head is None and previous == "probe":  # warm start; the probe head never leaves
            log.warning(
                "team %r: the probe's head is gone (site restarted?); round 1 starts a fresh head",
                self.team.name,
            )
            return None
        family = settings.get("model-family", "encoder-classifier")
        if head is None and family == "encoder-classifier":
            raise MedusaError(
                f"team {self.team.name!r}: round {settings.get('round')} continues the head of "
                f"{previous!r}, which this site no longer holds (restarted?) and the coordinator "
                "did not send (the team does not share its head: share-head = false)"
            )
        return head

    def sender(self, settings: Mapping[str, Any]) -> dict[str, str]:
        """Who made a payload: the team and the fingerprint of the base it started from."""
        return {
            "team": self.team.name,
            "fingerprint": base_for(spec_from_settings(settings)).fingerprint(),
        }

    # ---------------------------------------------------------------- stages
    def hello(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        """Load the base named by the coordinator and describe this team (no data leaves)."""
        if int(settings.get("protocol", -1)) != PROTOCOL_VERSION:
            raise ConfigError(
                f"coordinator speaks protocol {settings.get('protocol')!r}, this team site "
                f"speaks {PROTOCOL_VERSION}; install the same medusa-fed version at both ends"
            )
        base = base_for(spec_from_settings(settings))
        data = self.data(settings)
        num_labels_of(base, data)  # task and model family must agree
        sizes = describe(data)
        return {
            "team": self.team.name,
            "task": str(sizes.get("name", data.name)),
            "controlled": self.team.controlled,
            "fingerprint": base.fingerprint(),
            "labels": list(data.labels) or ["-"],
            "train-size": len(data.train),
            "test-size": len(data.test),
            "protocol": PROTOCOL_VERSION,
        }

    def probe(self, settings: Mapping[str, Any]) -> tuple[dict[str, SparseDelta], dict[str, float]]:
        """The probe: a short unmasked fine-tune from the base, top-d of each tensor's delta."""
        base = base_for(spec_from_settings(settings))
        data = self.data(settings)
        cfg = self.train_config(settings)
        density = float(settings.get("density", 0.2))
        result = probe(base, data, cfg, density=density)
        if result.head:  # a warm-started round 1 continues it (warm-start = true)
            self._keep_head("probe", result.head)
        return result.sparse, {k: float(v) for k, v in result.metrics.items()}

    def finetune(
        self,
        settings: Mapping[str, Any],
        mask: Mapping[str, torch.Tensor] | None,
        branch: str,
        start: Mapping[str, torch.Tensor] | None = None,
        head: Mapping[str, torch.Tensor] | None = None,
    ) -> BranchResult:
        """(Masked) fine-tune from ``start`` (default: the base); metrics of the team alone.

        The returned metrics carry ``alone_*`` (this branch on the team's test split) and, when
        the run asks for it (``eval-before``), ``before_*``: the base encoder with a head trained
        alone for the same budget (the floor every merge must beat).
        """
        base = base_for(spec_from_settings(settings))
        data = self.data(settings)
        cfg = self.train_config(settings)
        step = cfg  # masked: owned elements only, at the coordinator's larger shared-tensor step
        if mask is not None:
            step = replace(cfg, shared_lr_scale=float(settings.get("masked-lr-scale", 1.0)))
        result = finetune(
            base, data, step, mask=mask, start=start, head=head, desc=f"{branch} {self.team.name}"
        )
        metrics = {f"train_{k}": float(v) for k, v in result.metrics.items()}
        begin = dict(start) if start is not None else base.shared_state()
        tuned = {n: begin[n] + d for n, d in result.delta.items()}
        alone = self._test(base, data, tuned, result.head, cfg, f"alone {self.team.name}")
        metrics |= {f"alone_{k}": float(v) for k, v in alone.items()}
        if bool(settings.get("eval-before", False)) and self.kept_head("floor") is None:
            budget = replace(  # a round trains for part of the budget; the floor for all of it
                cfg,
                epochs=float(settings.get("budget-epochs", cfg.epochs)),
                max_steps=int(settings.get("budget-max-steps", cfg.max_steps)),
            )
            floor = finetune(base, data, budget, head_only=True, desc=f"floor {self.team.name}")
            self._keep_head("floor", floor.head)
            before = self._test(base, data, None, floor.head, cfg, f"floor {self.team.name}")
            metrics |= {f"before_{k}": float(v) for k, v in before.items()}
        if result.head:
            self._keep_head(branch, result.head)
        return BranchResult(result.delta, result.head, metrics)

    @staticmethod
    def _test(
        base: BaseModel,
        data: TaskData,
        shared: StateDict | None,
        head: StateDict,
        cfg: TrainConfig,
        desc: str,
    ) -> dict[str, float]:
        """Metrics of base + ``shared`` + ``head`` on the team's test split."""
        return evaluate(
            base,
            shared,
            head or None,
            data.test,
            num_labels=num_labels_of(base, data),
            batch_size=32,
            max_length=cfg.max_length,
            desc=desc,
        )

    def evaluate_merged(
        self,
        settings: Mapping[str, Any],
        shared: Mapping[str, torch.Tensor],
        head: Mapping[str, torch.Tensor] | None = None,
    ) -> tuple[dict[str, float], StateDict | None]:
        """Score merged shared weights with the head this team trained in ``settings['branch']``.

        With ``refit-epochs`` > 0 the head is first trained further on the frozen merged encoder
        (the team's training split, ``refit-lr``); returns the metrics and that re-fitted head
        (None without a re-fit)."""
        base = base_for(spec_from_settings(settings))
        data = self.data(settings)
        branch = str(settings.get("branch", "train"))
        kept = self.kept_head(branch)
        head = kept if kept is not None else head
        labels = num_labels_of(base, data)
        if labels is not None and head is None:
            raise MedusaError(
                f"team {self.team.name!r} has no {branch} head to evaluate with: this site did "
                "not run that stage in this process and the coordinator sent none"
            )
        refit = None
        epochs = float(settings.get("refit-epochs", 0.0))
        if epochs > 0 and labels is not None:
            cfg = replace(
                self.train_config(settings),
                epochs=epochs,
                max_steps=0,
                lr=float(settings.get("refit-lr", 1e-3)),
            )
            label = settings.get("method-label", "")
            refit = refit_head(base, data, cfg, shared, head, f"refit {label} {self.team.name}")
            head = refit
        metrics = evaluate(
            base,
            shared,
            head,
            data.test,
            num_labels=labels,
            batch_size=32,
            max_length=int(settings.get("max-length", 128)),
            desc=f"eval {settings.get('method-label', '')} {self.team.name}",
        )
        return metrics, refit


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


def site_for(context: Context) -> TeamSite:
    """The TeamSite of a Flower node: its node config names the team's data and choices."""
    show_progress()
    return TeamSite(TeamConfig.from_node_config(context.node_config), context.state)
