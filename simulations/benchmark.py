"""Merged-model quality: Medusa variants against the post-hoc merges, on the bundled tasks.

Every number comes from the coordinator's own pipeline (:func:`medusa_fed.pipeline.run_pipeline`):
one run per setting (a set of teams), seed and Medusa variant, where a variant is a named set of
run-config overrides. Under the pipeline a cache (:mod:`simulations.cached_transport`) answers a
request it has seen before, so a probe or an unmasked branch is trained once per team and seed
and reused by every run that needs it.

The compared merges run in the first variant's run of each setting and seed (``compare`` with
grids, each chosen on validation by the pipeline, and the ``federated`` anchors: FedAvg with
personal heads and TIES each round, with Medusa's rounds), with the same head re-fit as that
variant; the
ceiling ("alone": each team's unmasked branch) and the floor (a head trained on the frozen base)
come from the teams' own replies.
"""

from __future__ import annotations

import itertools
import logging
import shutil
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clients.team_site import TeamSite
from medusa_fed.merging import MergeChoice
from medusa_fed.pipeline import RunOutcome, run_pipeline
from medusa_fed.run_config import RunConfig
from medusa_fed.team_config import TeamConfig
from medusa_fed.training.config import ModelSpec
from medusa_fed.training.models import BaseModel, load_base

from .cached_transport import CachedSites

log = logging.getLogger(__name__)

QUICK_GRID: tuple[str, ...] = (
    "linear",
    "task_arithmetic:scale=0.3|0.5|1",
    "ties:density=0.2:scale=0.5|1",
    "dare_linear:drop_rate=0.9",
    "dare_task_arithmetic:drop_rate=0.9:scale=0.5|1",
    "dare_ties:drop_rate=0.9:scale=0.5|1",
    "tsv_m:scale=0.5|1|1.5",
    "iso_c:scale=0.5|1|1.5",
    "iso_cts:common_fraction=0.8:scale=0.5|1|1.5",
)
# standard mode: quick's grid with lambda up to 2 for the spectral merges (in quick mode TSV-M
# picked the grid's largest lambda, 1.5, on both settings: an anchor must not be cut short)
STANDARD_GRID: tuple[str, ...] = (
    *(g for g in QUICK_GRID if not g.startswith(("tsv_m", "iso_c"))),
    "tsv_m:scale=0.5|1|1.5|2",
    "iso_c:scale=0.5|1|1.5|2",
    "iso_cts:common_fraction=0.8:scale=0.5|1|1.5|2",
)
FULL_GRID: tuple[str, ...] = (
    "linear",
    "task_arithmetic:scale=0.3|0.5|0.7|1",
    "ties:density=0.1|0.2|0.5:scale=0.5|1",
    "dare_linear:drop_rate=0.5|0.9",
    "dare_task_arithmetic:drop_rate=0.5|0.9:scale=0.5|1",
    "dare_ties:drop_rate=0.5|0.9:scale=0.5|1",
    "tsv_m:scale=0.5|1|1.5|2",
    "iso_c:scale=0.5|1|1.5|2",
    "iso_cts:common_fraction=0.5|0.8:scale=0.5|1|1.5|2",
)

# A causal LM scores every grid candidate by running each validation prompt per team: one or
# two candidates per method keep a seed of the LLM budget below within about 40 min on 2 cores
LLM_GRID: tuple[str, ...] = (
    "linear",
    "task_arithmetic:scale=0.5|1",
    "ties:density=0.2:scale=1",
    "dare_ties:drop_rate=0.9:scale=1",
    "tsv_m:scale=1",
    "iso_c:scale=1",
)


def label(team: str) -> str:
    """A team's name in tables: the bundled task name, or its data file's stem."""
    return Path(team).stem


@dataclass(frozen=True)
class MedusaVariant:
    """One way to run Medusa: a name and the run-config keys it changes (kebab-case)."""

    name: str
    overrides: tuple[tuple[str, Any], ...] = ()
    uncontrolled_last: bool = False  # the setting's last team refuses masks

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self.overrides)


@dataclass
class BenchConfig:
    """What the benchmark runs (quick mode's data and budget by default)."""

    teams: tuple[str, ...] = ("movie", "tweet", "bbc", "spam")
    settings: tuple[tuple[str, ...], ...] = (
        ("movie", "tweet", "bbc"),
        ("movie", "tweet", "bbc", "spam"),
    )
    method: str = "full"
    model: str = "all-MiniLM-L6-v2"  # bundled model or a local Hugging Face directory
    seeds: tuple[int, ...] = (0,)
    max_train: int = 256
    max_eval: int = 200  # validation and test examples per task
    class_balance: bool = False  # run-config class-balance: capped subsets take classes equally
    epochs: float = 2.0
    probe_epochs: float = 1.0
    lr: float = 1e-4
    batch_size: int = 16
    max_length: int = 64
    floor: bool = True
    refit_lr: float = 1e-3  # head re-fit: a lone head on a frozen encoder takes a larger step
    grid: tuple[str, ...] = QUICK_GRID  # the compared merges, as run-config `compare` entries
    # federated anchors (run-config `federated`): FedAvg with personal heads, TIES each round
    federated: tuple[str, ...] = ("linear", "ties")
    variants: tuple[MedusaVariant, ...] = (MedusaVariant("default"),)
    # only the Medusa variants' cells (no ceiling, floor or compared merges): adds variants to
    # earlier runs of the same seeds, pooled with ``--combine``
    medusa_only: bool = False
    out: str = "runs/bench"  # each run's directory: <out>/runs/<setting>-s<seed>-<variant>
    keep_runs: bool = False  # keep each run's directory (else only its report)

    def run_config(self, seed: int, variant: MedusaVariant, out: Path, compare: bool) -> RunConfig:
        """The coordinator's RunConfig for one run of the benchmark."""
        mapping: dict[str, Any] = {
            "model": self.model,
            "method": self.method,
            "max-train": self.max_train,
            "max-eval": self.max_eval,
            "class-balance": self.class_balance,
            "epochs": self.epochs,
            "probe-epochs": self.probe_epochs,
            "lr": self.lr,
            "batch-size": self.batch_size,
            "max-length": self.max_length,
            "eval-before": self.floor,
            "refit-lr": self.refit_lr,
            "score-validation": True,  # variants and anchors are compared on validation
            "seed": seed,
            "store": "off",
            "out-dir": str(out),
            **variant.settings,
        }
        if compare:
            mapping["compare"] = ",".join(self.grid)
            mapping["federated"] = ",".join(self.federated)
        return RunConfig.from_mapping(mapping)


@dataclass
class Cell:
    """One method on one setting and seed: chosen settings, validation and test scores."""

    setting: str
    seed: int
    method: str
    params: dict[str, Any]
    validation: float
    test: dict[str, float]  # team -> test accuracy
    seconds: float
    grid_tried: int = 1

    @property
    def mean(self) -> float:
        return statistics.fmean(self.test.values())


@dataclass
class Bench:
    """Runs the pipeline once per setting, seed and variant over cached team sites."""

    cfg: BenchConfig
    progress: Callable[[str], None] | None = None
    base: BaseModel = field(init=False)
    sites: CachedSites = field(init=False)
    floor: dict[tuple[str, int], float] = field(default_factory=dict)  # (team, seed) -> acc

    def __post_init__(self) -> None:
        self.base = load_base(ModelSpec(source=self.cfg.model, method=self.cfg.method))  # type: ignore[arg-type]
        self.sites = CachedSites(self._site)

    @property
    def floor_name(self) -> str:
        """The floor's row: an encoder's head trained alone, or a causal LM untuned."""
        return "floor (head only)" if self.base.is_classifier else "untuned"

    def say(self, message: str) -> None:
        (self.progress or (lambda m: log.info("%s", m)))(message)

    def _site(self, key: str) -> TeamSite:
        task, _seed, controlled = key.split("|")
        return TeamSite(TeamConfig(label(task), task, controlled=controlled == "1"))

    def run_once(
        self, teams: tuple[str, ...], seed: int, variant: MedusaVariant, compare: bool
    ) -> RunOutcome:
        """One pipeline run: ``teams`` as nodes 1..n, the variant's settings."""
        setting = "+".join(label(t) for t in teams)
        out = Path(self.cfg.out) / "runs" / f"{setting}-s{seed}-{variant.name}"
        if out.exists():
            shutil.rmtree(out)  # a fresh run: a stale directory would be resumed
        config = self.cfg.run_config(seed, variant, out, compare)
        uncontrolled = teams[-1] if variant.uncontrolled_last else None
        keys = {i + 1: f"{t}|{seed}|{int(t != uncontrolled)}" for i, t in enumerate(teams)}
        self.say(f"{setting} seed {seed}: {variant.name}")
        outcome = run_pipeline(config, self.base, self.sites.transport(keys), history=False)
        if not self.cfg.keep_runs:  # the report stays; branches and merged weights go
            for path in out.iterdir():
                if path.name not in ("report.json", "report.md"):
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
        return outcome

    def cells_of(
        self, outcome: RunOutcome, setting: str, seed: int, variant: MedusaVariant, compare: bool
    ) -> list[Cell]:
        """The table cells one run yields: its Medusa merge, and with ``compare`` the ceiling,
        the floor and every compared merge."""
        t = outcome.timings_s
        medusa = outcome.run["merge"]
        cells = [self._cell(outcome, setting, seed, medusa, f"medusa:{variant.name}")]
        cells[0].params = {**variant.settings, **cells[0].params}
        cells[0].seconds = sum(t.get(s, 0.0) for s in ("probe", "assign", "train"))
        if not compare:
            return cells
        alone = {x.name: x.alone["accuracy"] for x in outcome.teams if x.alone}
        cells.append(Cell(setting, seed, "alone", {}, float("nan"), alone, t.get("baseline", 0)))
        for x in outcome.teams:
            if "accuracy" in x.before:
                self.floor[(x.name, seed)] = x.before["accuracy"]
        floor = {x.name: self.floor.get((x.name, seed)) for x in outcome.teams}
        if self.cfg.floor and all(v is not None for v in floor.values()):
            cells.append(
                Cell(setting, seed, self.floor_name, {}, float("nan"), floor, 0.0)  # type: ignore[arg-type]
            )
        for method in outcome.methods[1:]:
            cell = self._cell(outcome, setting, seed, method, method.split(":")[0])
            cell.seconds = t.get("federated" if method.startswith("fed-") else "baseline", 0.0)
            cells.append(cell)
        return cells

    def _cell(self, outcome: RunOutcome, setting: str, seed: int, label_: str, name: str) -> Cell:
        test = {x.name: x.merged[label_]["accuracy"] for x in outcome.teams if label_ in x.merged}
        params = dict(outcome.chosen.get(label_, {}))
        if float(outcome.run["refit-epochs"]) > 0:
            params["refit_epochs"] = float(outcome.run["refit-epochs"])
        # a label is the method's canonical text: its grid size is read back from it
        tried = 1 if label_.startswith("fed-") else len(MergeChoice.parse(label_).candidates())
        val = outcome.validation.get(label_, float("nan"))
        return Cell(setting, seed, name, params, val, test, 0.0, tried)

    def run(self) -> list[Cell]:
        cells: list[Cell] = []
        for seed, teams in itertools.product(self.cfg.seeds, self.cfg.settings):
            setting = "+".join(label(t) for t in teams)
            for i, variant in enumerate(self.cfg.variants):
                compare = i == 0 and not self.cfg.medusa_only
                outcome = self.run_once(tuple(teams), seed, variant, compare)
                cells += self.cells_of(outcome, setting, seed, variant, compare)
            self.say(
                f"{setting} seed {seed}: done (cache: {self.sites.hits} replayed, "
                f"{self.sites.misses} trained)"
            )
        return cells
