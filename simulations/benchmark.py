"""Merged-model quality: Medusa variants against the six post-hoc baselines on the bundled tasks.

Drives the library directly (no Flower: the protocol adds nothing to quality, and Ray only adds
noise); every branch is trained once and reused by every method that needs it:

- per team and seed: an unmasked fine-tune (the ceiling "alone", and the input of every post-hoc
  merge), a head trained on the frozen base (the floor), and a probe (top-d of a short fine-tune);
- per setting (a set of teams), seed and Medusa variant: an ownership map, and a masked fine-tune
  of each controlled team under it (an uncontrolled team reuses its unmasked branch).

Hyperparameters (lambda, TIES density, DARE drop rate) are chosen per setting and seed on the
validation split by mean accuracy over the teams; the test split is scored once, for the chosen
one. Each team always scores a merged encoder with its own head from the same branch kind.
"""

from __future__ import annotations

import itertools
import logging
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from medusa_fed.deltas import StateDict
from medusa_fed.errors import ConfigError
from medusa_fed.merging import MergeSpec, merge_states
from medusa_fed.merging.rounds import add_round, owned_probe, round_start
from medusa_fed.ownership import assign_ownership
from medusa_fed.training.branch import ProbeResult, finetune, probe, refit_head
from medusa_fed.training.config import ModelSpec, TrainConfig
from medusa_fed.training.data import TaskData, TaskSpec, load_task
from medusa_fed.training.evaluate import evaluate
from medusa_fed.training.models import BaseModel, load_base

log = logging.getLogger(__name__)

QUICK_GRID: dict[str, list[dict[str, float]]] = {
    "linear": [{}],
    "task_arithmetic": [{"scale": s} for s in (0.3, 0.5, 1.0)],
    "ties": [{"density": 0.2, "scale": s} for s in (0.5, 1.0)],
    "dare_linear": [{"drop_rate": 0.9}],
    "dare_task_arithmetic": [{"drop_rate": 0.9, "scale": s} for s in (0.5, 1.0)],
    "dare_ties": [{"drop_rate": 0.9, "scale": s} for s in (0.5, 1.0)],
}
FULL_GRID: dict[str, list[dict[str, float]]] = {
    "linear": [{}],
    "task_arithmetic": [{"scale": s} for s in (0.3, 0.5, 0.7, 1.0)],
    "ties": [{"density": d, "scale": s} for d in (0.1, 0.2, 0.5) for s in (0.5, 1.0)],
    "dare_linear": [{"drop_rate": p} for p in (0.5, 0.9)],
    "dare_task_arithmetic": [{"drop_rate": p, "scale": s} for p in (0.5, 0.9) for s in (0.5, 1.0)],
    "dare_ties": [{"drop_rate": p, "scale": s} for p in (0.5, 0.9) for s in (0.5, 1.0)],
}


def label(team: str) -> str:
    """A team's name in tables: the bundled task name, or its data file's stem."""
    return Path(team).stem


@dataclass(frozen=True)
class MedusaVariant:
    """One way to run Medusa: a name for the tables and its settings."""

    name: str
    policy: str = "proportional"  # GPA owner draw (the paper), argmax, balanced
    unselected: str = "random"  # elements no probe selected: random owner, or frozen at the base
    density: float = 0.2  # probe top-d
    rounds: int = 1  # merge -> continue masked training from the merge, R times (same budget)
    scales: tuple[float, ...] = (1.0,)  # lambda grid for base + lambda * sum of owned deltas
    uncontrolled_last: bool = False  # the setting's last team trains freely (uncontrolled)
    refit_epochs: float = 0.0  # > 0: each team re-fits its own head on the final merged encoder
    lr_scale: float = 1.0  # Medusa-branch training at lr_scale * the benchmark's lr (not the probe)
    # masked (controlled) training: the shared tensors' lr times this, the head's lr unchanged
    # (the coordinator's masked-lr-scale)
    masked_lr_scale: float = 1.0
    # diagnostic: score each team on base + its OWN branch only (no merge), with the same re-fit:
    # what the mask costs a team, without the other teams' changes
    isolated: bool = False
    # round 1 starts from base + each team's owned probe values, with the probe's head; masked
    # training gets epochs - probe_epochs (as the coordinator's warm-start)
    warm_start: bool = False


@dataclass
class BenchConfig:
    """What the benchmark runs: quick mode's data and budget; ``medusa bench`` sets the variants."""

    teams: tuple[str, ...] = ("movie", "tweet", "bbc", "spam")
    settings: tuple[tuple[str, ...], ...] = (
        ("movie", "tweet", "bbc"),
        ("movie", "tweet", "bbc", "spam"),
    )
    method: str = "full"
    model: str = "all-MiniLM-L6-v2"  # bundled model or a local Hugging Face directory
    seeds: tuple[int, ...] = (0,)
    max_train: int = 256
    max_validation: int = 100
    max_test: int = 200
    epochs: float = 2.0
    probe_epochs: float = 1.0
    lr: float = 1e-4
    batch_size: int = 16
    max_length: int = 64
    floor: bool = True
    refit_lr: float = 1e-3  # head re-fit: a lone head on a frozen encoder takes a larger step
    grid: dict[str, list[dict[str, float]]] = field(default_factory=lambda: dict(QUICK_GRID))
    variants: tuple[MedusaVariant, ...] = (
        MedusaVariant("proportional"),
        MedusaVariant("uncontrolled", uncontrolled_last=True),
    )
    # only the Medusa variants' cells (no ceiling, floor or baselines): adds variants to earlier
    # runs of the same seeds, pooled with ``--combine``
    medusa_only: bool = False


@dataclass
class Cell:
    """One method on one setting and seed: chosen parameters, validation and test scores."""

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


class Bench:
    """Trains what a cell needs once (cached), merges, evaluates."""

    def __init__(self, cfg: BenchConfig, progress: Callable[[str], None] | None = None) -> None:
        self.cfg = cfg
        self.base: BaseModel = load_base(ModelSpec(source=cfg.model, method=cfg.method))  # type: ignore[arg-type]
        self.base_state = self.base.shared_state()
        self.shapes = self.base.shapes
        self.say = progress or (lambda msg: log.info("%s", msg))
        self._data: dict[tuple[str, int], TaskData] = {}
        self._free: dict[tuple[str, int], tuple[StateDict, StateDict]] = {}
        self._probe: dict[tuple[str, int, float], ProbeResult] = {}
        self._val: dict[tuple[str, int, str], float] = {}

    # ------------------------------------------------------------- cached training
    def train_cfg(self, seed: int, epochs: float | None = None) -> TrainConfig:
        c = self.cfg
        return TrainConfig(
            epochs=epochs or c.epochs,
            lr=c.lr,
            batch_size=c.batch_size,
            max_length=c.max_length,
            seed=seed,
        )

    def data(self, team: str, seed: int) -> TaskData:
        key = (team, seed)
        if key not in self._data:
            c = self.cfg
            self._data[key] = load_task(
                TaskSpec(
                    source=team,
                    max_train=c.max_train,
                    max_validation=c.max_validation,
                    max_test=c.max_test,
                    seed=seed,
                )
            )
        return self._data[key]

    def free(self, team: str, seed: int) -> tuple[StateDict, StateDict]:
        """(delta, head) of the team's unmasked fine-tune."""
        key = (team, seed)
        if key not in self._free:
            self.say(f"train {team} unmasked (seed {seed})")
            r = finetune(
                self.base, self.data(team, seed), self.train_cfg(seed), desc=f"free {team}"
            )
            self._free[key] = (r.delta, r.head)
        return self._free[key]

    def probe(self, team: str, seed: int, density: float) -> ProbeResult:
        key = (team, seed, density)
        if key not in self._probe:
            self.say(f"probe {team} (seed {seed}, d={density})")
            cfg = self.train_cfg(seed, self.cfg.probe_epochs)
            self._probe[key] = probe(self.base, self.data(team, seed), cfg, density=density)
        return self._probe[key]

    # ------------------------------------------------------------- scoring
    def score(
        self,
        shared: Mapping[str, torch.Tensor] | None,
        heads: Mapping[str, StateDict],
        seed: int,
        split: str,
    ) -> dict[str, float]:
        out = {}
        for team, head in heads.items():
            data = self.data(team, seed)
            metrics = evaluate(
                self.base,
                shared,
                head,
                getattr(data, split),
                batch_size=64,
                max_length=self.cfg.max_length,
                desc=f"{split} {team}",
            )
            out[label(team)] = metrics["accuracy"]
        return out

    def choose(
        self,
        setting: str,
        seed: int,
        method: str,
        candidates: Sequence[tuple[dict[str, Any], Callable[[], StateDict]]],
        heads: Mapping[str, StateDict],
        refit_epochs: float = 0.0,
    ) -> Cell:
        """Score each candidate merge on validation; test the best one.

        With ``refit_epochs`` > 0 each team then re-fits its own head on the chosen merged
        encoder (head only, encoder frozen; its training split only) before validation and test
        are scored again."""
        started = time.monotonic()
        best: tuple[float, dict[str, Any], StateDict] | None = None
        for params, make in candidates:
            merged = make()
            if len(candidates) == 1 and refit_epochs > 0:  # nothing to choose; scored after
                best = (float("nan"), params, merged)
                break
            val = statistics.fmean(self.score(merged, heads, seed, "validation").values())
            log.info("bench: %s %s %s validation %.4f", setting, method, params, val)
            if best is None or val > best[0]:
                best = (val, params, merged)
        assert best is not None
        val, params, merged = best
        if refit_epochs > 0:
            heads = self.refit(merged, heads, seed, refit_epochs)
            val = statistics.fmean(self.score(merged, heads, seed, "validation").values())
            params = {**params, "refit_epochs": refit_epochs}
        test = self.score(merged, heads, seed, "test")
        return Cell(
            setting,
            seed,
            method,
            params,
            val,
            test,
            round(time.monotonic() - started, 1),
            len(candidates),
        )

    def refit(
        self, merged: StateDict, heads: Mapping[str, StateDict], seed: int, epochs: float
    ) -> dict[str, StateDict]:
        """Each team's head trained further on the frozen merged encoder (its own data)."""
        cfg = replace(self.train_cfg(seed, epochs), lr=self.cfg.refit_lr)
        return {
            team: refit_head(self.base, self.data(team, seed), cfg, merged, head)
            for team, head in heads.items()
        }

    # ------------------------------------------------------------- cells
    def reference_cells(self, teams: Sequence[str], setting: str, seed: int) -> list[Cell]:
        """Each team alone (ceiling) and base + head only (floor)."""
        started = time.monotonic()
        alone = {}
        for t in teams:
            if (t, seed, "alone") not in self._val:
                delta, head = self.free(t, seed)
                shared = {n: self.base_state[n] + delta[n] for n in delta}
                self._val[(t, seed, "alone")] = self.score(shared, {t: head}, seed, "test")[
                    label(t)
                ]
            alone[label(t)] = self._val[(t, seed, "alone")]
        cells = [
            Cell(
                setting,
                seed,
                "alone",
                {},
                float("nan"),
                alone,
                round(time.monotonic() - started, 1),
            )
        ]
        if self.cfg.floor:
            started = time.monotonic()
            floor = {}
            for t in teams:
                if (t, seed, "floor") not in self._val:
                    self.say(f"train {t} head only on the frozen base (seed {seed})")
                    r = finetune(
                        self.base,
                        self.data(t, seed),
                        self.train_cfg(seed),
                        head_only=True,
                        desc=f"floor {t}",
                    )
                    self._val[(t, seed, "floor")] = self.score(None, {t: r.head}, seed, "test")[
                        label(t)
                    ]
                floor[label(t)] = self._val[(t, seed, "floor")]
            cells.append(
                Cell(
                    setting,
                    seed,
                    "floor (head only)",
                    {},
                    float("nan"),
                    floor,
                    round(time.monotonic() - started, 1),
                )
            )
        return cells

    def baseline_cells(self, teams: Sequence[str], setting: str, seed: int) -> list[Cell]:
        deltas = {t: self.free(t, seed)[0] for t in teams}
        heads = {t: self.free(t, seed)[1] for t in teams}
        cells = []
        for method, grid in self.cfg.grid.items():
            self.say(f"{setting} seed {seed}: {method} ({len(grid)} settings on validation)")

            def make(params: dict[str, float], m: str = method) -> Callable[[], StateDict]:
                spec = MergeSpec(m, **{**params, "seed": seed})  # type: ignore[arg-type]
                return lambda: merge_states(self.base_state, deltas, spec)

            cells.append(self.choose(setting, seed, method, [(p, make(p)) for p in grid], heads))
        return cells

    def refit_baseline_cell(
        self,
        teams: Sequence[str],
        setting: str,
        seed: int,
        baselines: Sequence[Cell],
        epochs: float,
    ) -> Cell:
        """The best post-hoc baseline (by validation) with the same head re-fit as Medusa's
        refit variants get, so a refit gain is not credited to ownership."""
        best = max(baselines, key=lambda c: c.validation)
        deltas = {t: self.free(t, seed)[0] for t in teams}
        heads = {t: self.free(t, seed)[1] for t in teams}
        spec = MergeSpec(best.method, **{**best.params, "seed": seed})  # type: ignore[arg-type]
        self.say(f"{setting} seed {seed}: {best.method} {best.params} + head refit")
        cell = self.choose(
            setting,
            seed,
            "best post-hoc+refit",
            [(dict(best.params), lambda: merge_states(self.base_state, deltas, spec))],
            heads,
            refit_epochs=epochs,
        )
        cell.params = {"merge": best.method, **cell.params}
        return cell

    def medusa_cell(self, teams: Sequence[str], setting: str, seed: int, v: MedusaVariant) -> Cell:
        started = time.monotonic()
        epochs = self.cfg.epochs - (self.cfg.probe_epochs if v.warm_start else 0.0)
        if epochs <= 0:
            raise ConfigError(
                f"variant {v.name}: a warm start trains epochs - probe_epochs after the probe, "
                f"found {self.cfg.epochs} - {self.cfg.probe_epochs}; give epochs > probe_epochs"
            )
        uncontrolled = [teams[-1]] if v.uncontrolled_last else []
        controlled = {t: t not in uncontrolled for t in teams}
        probed = {t: self.probe(t, seed, v.density) for t in teams}
        ownership = assign_ownership(
            {t: p.sparse for t, p in probed.items()},
            self.shapes,
            controlled,
            policy=v.policy,  # type: ignore[arg-type]
            unselected=v.unselected,  # type: ignore[arg-type]
            seed=seed,
        )
        heads: dict[str, StateDict | None] = {t: None for t in teams}
        total: dict[str, StateDict] = {}  # each team's summed round deltas (as the coordinator)
        if v.warm_start:
            total = {
                t: owned_probe(probed[t].sparse, None if t in uncontrolled else ownership.mask(t))
                for t in teams
            }
            heads = {t: probed[t].head for t in teams}
        per_round = epochs / v.rounds
        for r in range(v.rounds):
            self.say(f"{setting} seed {seed}: {v.name} round {r + 1}/{v.rounds}")
            start = round_start(self.base_state, total, uncontrolled) if total else None
            for t in teams:
                if t in uncontrolled and v.rounds == 1 and not v.warm_start:
                    total[t], heads[t] = self.free(t, seed)
                    continue
                mask = None if t in uncontrolled else ownership.mask(t)
                if v.isolated and t in total:  # from base + its own branch: no one else's change
                    start = round_start(self.base_state, {t: total[t]}, uncontrolled)
                cfg = self.train_cfg(seed, per_round)
                res = finetune(
                    self.base,
                    self.data(t, seed),
                    replace(
                        cfg,
                        lr=cfg.lr * v.lr_scale,
                        head_lr=cfg.lr * v.lr_scale,
                        shared_lr_scale=1.0 if mask is None else v.masked_lr_scale,
                    ),
                    mask=mask,
                    start=start,
                    head=heads[t],
                    desc=f"{v.name} {t} r{r + 1}",
                )
                total[t] = add_round(total.get(t), res.delta)
                heads[t] = res.head
        final_heads = {t: h for t, h in heads.items() if h is not None}
        if v.isolated:
            cell = self.isolated_cell(setting, seed, v, total, final_heads)
            cell.seconds = round(time.monotonic() - started, 1)
            return cell

        def make(scale: float) -> Callable[[], StateDict]:
            spec = MergeSpec("medusa", scale=scale)
            return lambda: merge_states(self.base_state, total, spec, uncontrolled=uncontrolled)

        cell = self.choose(
            setting,
            seed,
            v.name,
            [({"scale": s}, make(s)) for s in v.scales],
            final_heads,
            refit_epochs=v.refit_epochs,
        )
        cell.params = {**asdict(v), **cell.params}
        cell.params.pop("name", None)
        cell.seconds = round(time.monotonic() - started, 1)
        return cell

    def isolated_cell(
        self,
        setting: str,
        seed: int,
        v: MedusaVariant,
        total: Mapping[str, StateDict],
        heads: Mapping[str, StateDict],
    ) -> Cell:
        """Each team on base + its own branch only (its head re-fitted as a merge's would be)."""
        val: dict[str, float] = {}
        test: dict[str, float] = {}
        for team, head in heads.items():
            alone = merge_states(self.base_state, {team: total[team]}, MergeSpec("medusa"))
            own = {team: head}
            if v.refit_epochs > 0:
                own = self.refit(alone, own, seed, v.refit_epochs)
            val |= self.score(alone, own, seed, "validation")
            test |= self.score(alone, own, seed, "test")
        params = {k: x for k, x in asdict(v).items() if k != "name"}
        return Cell(setting, seed, v.name, params, statistics.fmean(val.values()), test, 0.0)

    def run(self) -> list[Cell]:
        cells: list[Cell] = []
        for seed, teams in itertools.product(self.cfg.seeds, self.cfg.settings):
            setting = "+".join(label(t) for t in teams)
            if not self.cfg.medusa_only:
                cells += self.reference_cells(teams, setting, seed)
                baselines = self.baseline_cells(teams, setting, seed)
                cells += baselines
                refits = sorted({v.refit_epochs for v in self.cfg.variants if v.refit_epochs > 0})
                for epochs in refits:
                    cells.append(self.refit_baseline_cell(teams, setting, seed, baselines, epochs))
            for v in self.cfg.variants:
                cell = self.medusa_cell(teams, setting, seed, v)
                cell.method = f"medusa:{v.name}"
                cells.append(cell)
            self.say(f"{setting} seed {seed}: done")
        return cells
