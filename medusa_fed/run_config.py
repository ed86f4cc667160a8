"""The coordinator's run configuration, validated once at the entry point.

Flower hands the ServerApp ``context.run_config`` (the ``[tool.flwr.app.config]`` table, kebab-case
keys); the simulation CLI builds the same mapping from its flags. :meth:`RunConfig.from_mapping` is
the only place that reads those raw keys; everything deeper takes the frozen dataclass.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, get_args

from medusa_fed.codec.downlink import DownlinkDtype
from medusa_fed.errors import ConfigError
from medusa_fed.merging.spec import OWNERSHIP_METHODS, MergeChoice
from medusa_fed.ownership.assign import OwnershipUnit, Policy, Unselected
from medusa_fed.training.config import (
    Family,
    Method,
    ProbeScores,
    family_of,
    parse_lr_scales,
)

ProbeWeights = Literal["rank", "magnitude"]
Downlink = Literal["lacking", "dense"]


@dataclass(frozen=True)
class RunConfig:
    """Everything the coordinator decides for a run (team-side choices live in each node config)."""

    model: str = "all-MiniLM-L6-v2"  # bundled model name or a local Hugging Face directory
    model_family: Family = "encoder-classifier"
    method: Method = "full"  # full fine-tuning, or PEFT LoRA / IA3 adapters
    probe_epochs: float = 1.0  # the paper's probe: one epoch from the base
    probe_max_steps: int = 0  # > 0 caps the probe (overrides probe_epochs)
    probe_density: float = 0.2  # top-d of each tensor's probe delta sent to the coordinator
    assignment: Policy = "proportional"  # GPA owner draw (paper); argmax; balanced shares
    unselected: Unselected = "random"  # elements no probe selected: random owner, or stay at base
    # what one owner gets: an element (the paper), a whole LoRA rank component (row k of A with
    # column k of B; the merged update is then exactly the sum of each team's own B_k A_k), or a
    # whole output row of each weight matrix (each team's update acts on its own neurons)
    ownership_unit: OwnershipUnit = "element"
    # what the owner draw compares across teams: each team's per-tensor ranks of its probe values
    # (no scale of a probe wins a share; medusa_fed/ownership/fairness.py), or raw magnitudes
    probe_weights: ProbeWeights = "rank"
    # what ranks each probe's entries (and weighs them in the assignment): "delta" = |delta|
    # (the paper), "fisher" = sqrt(F x delta^2), F the squared gradients summed over the probe's
    # steps (F x delta^2 ~ the loss the team would regain if the element went back to the base);
    # sends the scores beside its delta (not under the privacy option, which does not noise them)
    probe_scores: ProbeScores = "delta"
    max_share: float = 1.0  # < 1: no controllable team owns more than this fraction of elements
    # a team's TRAIN upload is refused when its L2 norm exceeds this times the norm of its own
    # probe on the same elements (owned ones; all for an uncontrolled team); 0 = no bound.
    # Honest rounds measured 0.66-0.74 (MiniLM, 2 rounds) and 1.24 (tiny BERT, 1 round)
    update_norm_ratio: float = 10.0
    merge: MergeChoice = MergeChoice("medusa")  # the run's main merge
    compare: tuple[MergeChoice, ...] = ()  # post-hoc baselines merged from unmasked branches too
    # federated anchors with the same budget and rounds as Medusa: every team trains unmasked
    # from the last round's merge (its own head kept: personal heads, FedPer), merged each round
    # with the method named (linear = FedAvg; ties = TIES each round); table label "fed-<method>"
    federated: tuple[MergeChoice, ...] = ()
    epochs: float = 2.0  # masked fine-tuning budget per team (all rounds together)
    # multi-round Medusa: the budget is split into `rounds` rounds; after each round but the last
    # the coordinator merges and every team continues from the merge (its own elements, its head)
    rounds: int = 2
    # warm start: the probe is the branch's first part. Round 1 starts from base + each team's
    # probe values on the elements it owns (the coordinator holds them already), with the probe's
    # head; the rounds then train the rest of the budget (epochs - probe-epochs), so a Medusa team
    # trains exactly as long as a post-hoc baseline's branch. Warm start + 2 rounds + a head
    # re-fit is the default: the best Medusa in the benchmark (README, "Merge quality"); rounds = 1,
    # warm-start = false, refit-epochs = 0 is the paper's one-shot recipe
    warm_start: bool = True
    # > 0: in EVAL each team first re-fits its own head (encoder frozen) on each merged model for
    # this many epochs at refit-lr, then scores; every compared method gets the same re-fit
    refit_epochs: float = 1.0
    refit_lr: float = 1e-3
    max_steps: int = 0  # > 0 caps fine-tuning steps (overrides epochs)
    lr: float = 0.0  # 0 = the method's default learning rate
    # masked training (controlled teams, TRAIN rounds) moves only the team's owned share of the
    # shared elements; its shared-tensor lr is lr times this (the head's lr, the probe, the
    # uncontrolled teams and the baselines' branches stay at lr)
    masked_lr_scale: float = 1.0
    # "1|2|3": each controlled team trains every TRAIN round once at each of these scales (in
    # place of masked-lr-scale) and keeps the branch its own validation split scores best (ties:
    # the first listed); each round then costs that many fine-tunes at the team. "" = off
    masked_lr_choices: str = ""
    # what a round's start (and Medusa's merged weights in EVAL) costs a controlled team on the
    # down-link: "lacking" sends only the other teams' owned values (the team rebuilds its own from
    # what it holds, checked by fingerprint; a site that lost them gets the dense weights), "dense"
    # the whole dense fp32 weights. Both give the same results bit for bit at downlink-dtype fp32
    downlink: Downlink = "lacking"
    # how "lacking" sends the other teams' values: fp32 as they are (bit-exact), fp16 / bf16 their
    # difference from the base (half the bytes, lossy: docs/benchmarks.md, "Down-link bytes")
    downlink_dtype: DownlinkDtype = "fp32"
    batch_size: int = 16
    max_length: int = 128
    max_train: int = 1000  # examples per team (a team's node config may lower it)
    max_eval: int = 500
    # true: each team's capped train / validation / test subsets take every class equally, as far
    # as its examples go, instead of in proportion; for small subsets of a skewed task, where the
    # majority class would decide accuracy (the LLM benchmark's 32 test examples of spam: 28 ham)
    class_balance: bool = False
    eval_before: bool = True  # also measure the floor: base encoder + a head trained alone
    # also score a merge given without a grid on the teams' validation splits (a grid is always
    # scored there): the benchmark compares variants and anchors on validation, never on test
    score_validation: bool = False
    min_teams: int = 2  # fewer usable teams than this stops the run with an error
    # false: a team that declares itself uncontrolled (refuses masks, may write every element) is
    # left out at HELLO
    allow_uncontrolled: bool = True
    # privacy option, applied at every site (medusa_fed/privacy.py): each probe and TRAIN upload is
    # clipped to L2 norm dp-clip and every value sent gets N(0, (dp-noise x dp-clip)^2); 0 = off
    dp_clip: float = 0.0
    dp_noise: float = 0.0
    # deployment: "alpha=<node id>,beta=<node id>" binds each team name to the node id Flower gave
    # its registered (authenticated) SuperNode key (`flwr supernode list`); a node that claims
    # another name, or is not listed, is left out at HELLO. "" = names are not bound (simulation)
    team_nodes: str = ""
    stage_timeout_s: float = 3600.0  # how long each stage waits for replies
    seed: int = 0
    out_dir: str = "runs/latest"
    # branch store the run is imported into when it ends (medusa log / merge / export read it):
    # "" = $MEDUSA_STORE or ./runs/.medusa-store (where `medusa log` looks too), "off" = none
    store: str = ""

    def __post_init__(self) -> None:
        def choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
            if value not in allowed:
                raise ConfigError(f"{name}: expected one of {', '.join(allowed)}, found {value!r}")

        for f in fields(self):  # every bound below is a comparison, which NaN passes silently
            value = getattr(self, f.name)
            if f.type == "float" and not (isinstance(value, int | float) and math.isfinite(value)):
                raise ConfigError(
                    f"{f.name.replace('_', '-')}: expected a finite number, found {value!r}"
                )
        choice("model-family", self.model_family, get_args(Family))
        object.__setattr__(self, "model_family", family_of(self.model, self.model_family))
        choice("method", self.method, get_args(Method))
        choice("assignment", self.assignment, get_args(Policy))
        choice("unselected", self.unselected, get_args(Unselected))
        choice("ownership-unit", self.ownership_unit, get_args(OwnershipUnit))
        if self.ownership_unit == "lora-rank" and self.method != "lora":
            raise ConfigError(
                f"ownership-unit = lora-rank: expected method = lora, found {self.method!r}"
            )
        if self.ownership_unit == "row" and self.method == "ia3":
            raise ConfigError(
                "ownership-unit = row: expected method = full or lora (IA3's vectors have no "
                "rows), found 'ia3'"
            )
        choice("probe-weights", self.probe_weights, get_args(ProbeWeights))
        choice("probe-scores", self.probe_scores, get_args(ProbeScores))
        if self.probe_scores == "fisher" and self.dp_clip > 0:
            raise ConfigError(
                "probe-scores = fisher: expected dp-clip = 0 (the privacy option clips and "
                "noises the probe's values, not its gradient scores), found dp-clip = "
                f"{self.dp_clip}"
            )
        choice("downlink", self.downlink, get_args(Downlink))
        choice("downlink-dtype", self.downlink_dtype, get_args(DownlinkDtype))
        if self.downlink == "dense" and self.downlink_dtype != "fp32":
            raise ConfigError(
                f"downlink-dtype = {self.downlink_dtype}: expected fp32 with downlink = dense "
                "(only the 'lacking' down-link compresses)"
            )
        if not 0.0 < self.max_share <= 1.0:  # NaN fails too
            raise ConfigError(f"max-share must be in (0, 1] (1 = no cap), found {self.max_share}")
        if not (self.dp_clip >= 0 and self.dp_noise >= 0):
            raise ConfigError(
                f"dp-clip and dp-noise must be >= 0 and finite (dp-clip 0 = off), found "
                f"{self.dp_clip} and {self.dp_noise}"
            )
        if self.dp_noise > 0 and not self.dp_clip:
            raise ConfigError(
                f"dp-noise {self.dp_noise} needs dp-clip > 0 (the noise is dp-noise x dp-clip)"
            )
        if self.update_norm_ratio < 0:
            raise ConfigError(
                f"update-norm-ratio must be >= 0 and finite (0 = no bound), found "
                f"{self.update_norm_ratio}"
            )
        if not 0.0 < self.probe_density <= 1.0:
            raise ConfigError(f"probe-density must be in (0, 1], found {self.probe_density}")
        for name in ("probe_epochs", "epochs"):
            if getattr(self, name) <= 0:
                raise ConfigError(
                    f"{name.replace('_', '-')} must be > 0, found {getattr(self, name)}"
                )
        for name in ("batch_size", "max_length", "max_train", "max_eval", "min_teams", "rounds"):
            if getattr(self, name) < 1:
                raise ConfigError(
                    f"{name.replace('_', '-')} must be >= 1, found {getattr(self, name)}"
                )
        if self.stage_timeout_s <= 0:
            raise ConfigError(f"stage-timeout-s must be > 0, found {self.stage_timeout_s}")
        if self.refit_epochs < 0 or self.refit_lr <= 0:
            raise ConfigError(
                f"refit-epochs must be >= 0 (0 = off) and refit-lr > 0, found "
                f"{self.refit_epochs} and {self.refit_lr}"
            )
        if self.warm_start and self.uses_ownership:
            if self.max_steps and not 0 < self.probe_max_steps < self.max_steps:
                raise ConfigError(
                    "warm-start counts the probe in the budget: with max-steps = "
                    f"{self.max_steps} it needs 0 < probe-max-steps < max-steps, found "
                    f"probe-max-steps = {self.probe_max_steps}; set one, or warm-start = false"
                )
            if not self.max_steps and self.probe_epochs >= self.epochs:
                raise ConfigError(
                    "warm-start counts the probe in the budget: it needs probe-epochs < epochs, "
                    f"found probe-epochs = {self.probe_epochs}, epochs = {self.epochs}; raise "
                    "epochs, lower probe-epochs, or set warm-start = false"
                )
        if self.lr < 0:
            raise ConfigError(f"lr must be >= 0 (0 = method default), found {self.lr}")
        if not (self.masked_lr_scale > 0):
            raise ConfigError(
                f"masked-lr-scale must be > 0 and finite (1 = the lr unchanged), found "
                f"{self.masked_lr_scale}"
            )
        try:
            parse_lr_scales(self.masked_lr_choices)
        except ValueError as exc:
            raise ConfigError(f"masked-lr-choices: {exc}") from None
        self.team_node_table  # noqa: B018 - parsed once here so a bad table fails at start
        grids = [c.label for c in self.federated if len(c.candidates()) > 1]
        owned = [c.label for c in self.federated if c.method in OWNERSHIP_METHODS]
        if owned:
            raise ConfigError(
                "federated: expected post-hoc merge methods (linear = FedAvg, ties, ...), found "
                f"{owned}, which merge a Medusa run's owned branches"
            )
        if grids:
            raise ConfigError(
                f"federated {grids}: expected one value per setting; a grid would train every "
                "candidate's rounds (choose the settings on a separate run)"
            )
        if not self.uses_ownership and (self.compare or self.federated):
            raise ConfigError(
                f"merge = {self.merge.label!r} already runs without ownership; 'compare' and "
                "'federated' are only "
                "for comparing post-hoc baselines against merge = medusa"
            )

    @property
    def team_node_table(self) -> dict[int, str]:
        """node id -> team name, from ``team-nodes`` (empty when names are not bound)."""
        table: dict[int, str] = {}
        for item in (x.strip() for x in self.team_nodes.split(",")):
            if not item:
                continue
            team, _, node = item.partition("=")
            try:
                node_id = int(node.strip())
            except ValueError:
                raise ConfigError(
                    f"team-nodes: expected team=<node id> items, found {item!r}"
                ) from None
            if node_id in table or team.strip() in table.values():
                raise ConfigError(f"team-nodes: each team and node id once, found {item!r} again")
            table[node_id] = team.strip()
        return table

    @property
    def train_rounds(self) -> int:
        """Rounds of masked training: ``rounds``; a post-hoc baseline run (merge is not medusa)
        trains its free branches once, so rounds do not apply to it."""
        return self.rounds if self.uses_ownership else 1

    @property
    def warm(self) -> bool:
        """Whether masked training continues from the probe (warm-start in a Medusa run)."""
        return self.warm_start and self.uses_ownership

    def round_budget(self, after_probe: bool) -> tuple[float, int]:
        """One round's (epochs, step cap; 0 = none): the budget, less the probe's when the
        rounds continue the probe, split evenly over the rounds (steps rounded up)."""
        epochs = (self.epochs - (self.probe_epochs if after_probe else 0.0)) / self.train_rounds
        if not self.max_steps:
            return epochs, 0
        steps = self.max_steps - (self.probe_max_steps if after_probe else 0)
        return epochs, -(-steps // self.train_rounds)

    @property
    def round_epochs(self) -> float:
        """The fine-tuning epochs of one Medusa round (the probe's counted when warm)."""
        return self.round_budget(self.warm)[0]

    @property
    def round_max_steps(self) -> int:
        """The step cap of one Medusa round (0 = none; the probe's counted when warm)."""
        return self.round_budget(self.warm)[1]

    @property
    def uses_ownership(self) -> bool:
        """Medusa mode (probe, assign, masked training) versus a pure post-hoc baseline run."""
        return self.merge.method in OWNERSHIP_METHODS

    @property
    def needs_free_branches(self) -> bool:
        """Whether teams must also fine-tune unmasked (baseline mode or baselines compared)."""
        return not self.uses_ownership or bool(self.compare)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> RunConfig:
        """Build from kebab-case keys (Flower run config or CLI); unknown keys are an error."""
        known = {f.name.replace("_", "-"): f for f in fields(cls)}
        unknown = sorted(k for k in raw if k not in known)
        if unknown:
            raise ConfigError(
                f"unknown run-config keys {unknown}; expected some of {sorted(known)}"
            )
        kwargs: dict[str, Any] = {}
        for key, value in raw.items():
            f = known[key]
            default = f.default
            try:
                if f.name == "merge":
                    kwargs[f.name] = MergeChoice.parse(str(value))
                elif f.name in ("compare", "federated"):
                    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
                    kwargs[f.name] = tuple(MergeChoice.parse(s) for s in items if str(s).strip())
                elif isinstance(default, bool):
                    kwargs[f.name] = _parse_bool(key, value)
                elif isinstance(default, int):
                    kwargs[f.name] = int(value)
                elif isinstance(default, float):
                    kwargs[f.name] = float(value)
                else:
                    kwargs[f.name] = str(value)
            except (TypeError, ValueError) as exc:
                if isinstance(exc, ConfigError):
                    raise
                raise ConfigError(f"{key}: cannot use {value!r} ({exc})") from exc
        return cls(**kwargs)

    def to_mapping(self) -> dict[str, Any]:
        """The kebab-case mapping (JSON-able) that :meth:`from_mapping` reads back."""
        out: dict[str, Any] = {}
        for key, value in asdict(self).items():
            if key == "merge":
                value = self.merge.label
            elif key in ("compare", "federated"):
                value = ",".join(c.label for c in getattr(self, key))
            out[key.replace("_", "-")] = value
        return out


def _parse_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{key}: expected true or false, found {value!r}")
