"""MedusaStrategy: the coordinator's stage loop (HELLO, PROBE, ASSIGN, TRAIN, MERGE, EVAL).

The algorithms are plain functions in ``medusa_fed`` (ownership, merging, codec); this class only
moves payloads between Flower messages and those functions, checks every payload before storing
it, and writes each stage's outputs to the run directory before the next stage starts. A stage
whose outputs are already stored is not asked of the teams again (restart resumes).
"""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from medusa_fed import codec
from medusa_fed.codec.layout import Payload
from medusa_fed.codec.records import arrays_from_record, record_from_arrays
from medusa_fed.deltas import SparseDelta, StateDict
from medusa_fed.errors import ConfigError, MedusaError, PayloadError
from medusa_fed.merging import MergeSpec, merge_states_with_report
from medusa_fed.merging.rounds import add_round, owned_probe, round_start
from medusa_fed.ownership import OwnershipMap, assign_ownership
from medusa_fed.protocol import (
    ARRAYS_KEY,
    CONFIG_KEY,
    HEAD_KEY,
    METRICS_KEY,
    MSG_EVAL,
    MSG_FREE,
    MSG_HELLO,
    MSG_PROBE,
    MSG_TRAIN,
    PROTOCOL_VERSION,
    START_KEY,
)
from medusa_fed.report import write_report
from medusa_fed.run_config import MergeChoice, RunConfig
from medusa_fed.store.importer import import_after_run
from medusa_fed.store.run_dir import RunDir
from medusa_fed.training.config import ModelSpec
from medusa_fed.training.export import save_model_dir

from .exchange import Roster, exchange, request
from .run_report import build_report

log = logging.getLogger(__name__)


@dataclass
class Branches:
    """What the teams delivered in TRAIN: dense fp32 deltas of the shared space, and heads."""

    deltas: dict[str, StateDict] = field(default_factory=dict)
    heads: dict[str, StateDict] = field(default_factory=dict)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)


class MedusaStrategy:
    """Drives one Medusa run over a Flower Grid.

    Parameters
    ----------
    config : RunConfig
        The validated run configuration.
    base : medusa_fed.training.BaseModel
        The base model loaded at the coordinator: its shared state is what ownership covers.
    run_dir : RunDir | None (default: RunDir(config.out_dir))
        Where every stage's inputs and outputs are stored.
    """

    def __init__(self, config: RunConfig, base, run_dir: RunDir | None = None) -> None:  # type: ignore[no-untyped-def]
        self.config = config
        self.base = base
        self.run_dir = run_dir or RunDir(Path(config.out_dir))
        self.base_state: StateDict = base.shared_state()
        self.shapes = {name: tuple(t.shape) for name, t in self.base_state.items()}
        self.fingerprint: str = base.fingerprint()
        self.roster = Roster()
        self.ownership: OwnershipMap | None = None
        self.masked = Branches()
        self.free = Branches()
        self.merged: dict[str, StateDict] = {}
        self.merge_stats: dict[str, dict] = {}
        self.eval_metrics: dict[str, dict[str, dict[str, float]]] = {}  # method -> team -> metrics
        self.bytes: dict[str, dict[str, dict[str, int]]] = {}
        self.timings: dict[str, float] = {}
        # No honest payload is larger than twice a dense fp32 copy of the shared space.
        self.max_payload_bytes = 2 * codec.dense_fp32_nbytes(self.shapes)

    # ------------------------------------------------------------------ the loop
    def run(self, grid: Grid) -> dict:
        """Run every stage and return the report (also written to the run directory)."""
        self.run_dir.write_json(
            "config.json", {"run": self.config.to_mapping(), "fingerprint": self.fingerprint}
        )
        self._timed("hello", lambda: self.hello(grid))
        if self.config.uses_ownership:
            self._timed("probe", lambda: self.probe(grid))
            self._timed("assign", self.assign)
            self._timed("train", lambda: self.train(grid))
        if self.config.needs_free_branches:
            self._timed("baseline", lambda: self.train_free(grid))
        self._timed("merge", self.merge)
        self._timed("eval", lambda: self.evaluate(grid))
        report = build_report(self)
        write_report(report, self.run_dir)
        import_after_run(self.run_dir, self.config.store)  # into the branch store: `medusa log`
        return report

    def _timed(self, stage: str, fn) -> None:  # type: ignore[no-untyped-def]
        started = time.monotonic()
        log.info("%s: start", stage)
        fn()
        self.timings[stage] = round(time.monotonic() - started, 2)
        log.info("%s: done in %.1f s", stage, self.timings[stage])

    def _usable(self, stage: str) -> list[str]:
        teams = self.roster.active
        if len(teams) < self.config.min_teams:
            raise ConfigError(
                f"{stage}: {len(teams)} team(s) left ({', '.join(teams) or 'none'}), the run needs "
                f"min-teams = {self.config.min_teams}; left out: "
                f"{ {t: r.splitlines()[0] for t, r in self.roster.left_out.items()} }. Stored "
                f"payloads are kept in {self.run_dir.path}"
            )
        return teams

    def _reject(self, team: str, stage: str, reason: str) -> None:
        self.run_dir.record_rejection(team, stage, reason)

    def _count(self, team: str, stage: str, sent: int, received: int) -> None:
        dense = codec.dense_fp32_nbytes(self.shapes)
        self.bytes.setdefault(team, {})[stage] = {
            "sent": sent,
            "received": received,
            "dense_fp32": dense,
        }

    # ------------------------------------------------------------------ 0 HELLO
    def hello(self, grid: Grid) -> None:
        """Ask every connected node who it is; keep those whose base fingerprint matches."""
        nodes = sorted(grid.get_node_ids())
        log.info("hello: %d node(s) connected", len(nodes))
        settings = {
            "protocol": PROTOCOL_VERSION,
            "fingerprint": self.fingerprint,
            **self._train_settings(),
        }
        for node in nodes:  # HELLO goes to nodes before their team names are known
            self.roster.node_of[f"node-{node}"] = node
        replies = exchange(
            grid,
            self.roster,
            "hello",
            MSG_HELLO,
            lambda _t: request(settings),
            self.config.stage_timeout_s,
            on_rejection=self._reject,
        )
        self.roster = Roster(left_out={})
        for placeholder, reply in replies.items():
            facts = dict(reply.content[CONFIG_KEY])
            team = str(facts.get("team", ""))
            node = reply.metadata.src_node_id
            if not team:
                self._reject(placeholder, "hello", "reply carries no team name")
                continue
            if team in self.roster.node_of:
                self._reject(team, "hello", f"team name {team!r} used by two nodes; second dropped")
                continue
            self.roster.node_of[team] = node
            self.roster.info[team] = facts
            if facts.get("fingerprint") != self.fingerprint:
                reason = (
                    f"base fingerprint {str(facts.get('fingerprint'))[:12]}... differs from the "
                    f"coordinator's {self.fingerprint[:12]}...: the team loaded another base"
                )
                self._reject(team, "hello", reason)
                self.roster.drop(team, "hello", reason)
                continue
            self.run_dir.write_json(f"hello/{team}.json", facts)
        teams = self._usable("hello")
        log.info(
            "hello: teams %s (uncontrolled: %s)",
            teams,
            [t for t in teams if not self.roster.controlled(t)],
        )

    # ------------------------------------------------------------------ 1 PROBE
    def probe(self, grid: Grid) -> None:
        """Collect each controlled team's top-d probe delta (uncontrolled ones probe too: they
        steer the direction, paper Algorithm 1 line 5)."""
        teams = self._usable("probe")
        cfg = self.config
        todo = [t for t in teams if not self._stored(t, "probe", f"probe/{t}.safetensors")]
        settings = {
            **self._train_settings(),
            "epochs": cfg.probe_epochs,
            "max-steps": cfg.probe_max_steps,
            "density": cfg.probe_density,
        }
        replies = exchange(
            grid,
            self.roster,
            "probe",
            MSG_PROBE,
            lambda _t: request(settings),
            cfg.stage_timeout_s,
            teams=todo,
            on_rejection=self._reject,
        )
        for team, reply in replies.items():
            try:
                self._check_sender(team, reply)
                arrays = arrays_from_record(reply.content[ARRAYS_KEY])
                codec.decode_sparse_delta(
                    arrays,
                    self.shapes,
                    team=team,  # validate, then store
                    max_bytes=self.max_payload_bytes,
                )
            except (MedusaError, KeyError) as exc:
                self._drop(team, "probe", f"payload rejected: {exc}")
                continue
            self.run_dir.write_tensors(
                f"probe/{team}.safetensors",
                {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()},
            )
            self._count(team, "probe", sent=0, received=codec.payload_nbytes(arrays))
        self._usable("probe")

    def _load_probes(self) -> dict[str, dict[str, SparseDelta]]:
        probes = {}
        for team in self.roster.active:
            tensors, _ = self.run_dir.read_tensors(f"probe/{team}.safetensors")
            arrays = {k: v.numpy() for k, v in tensors.items()}
            probes[team] = codec.decode_sparse_delta(arrays, self.shapes, team=team)
        return probes

    # ------------------------------------------------------------------ 2 ASSIGN
    def assign(self) -> None:
        """Give every shared element one owner among the controlled teams (GPA)."""
        if self.run_dir.exists("ownership.safetensors", verify=True):
            self.ownership = OwnershipMap.load(self.run_dir.file_path("ownership.safetensors"))
            log.info("assign: ownership map loaded from the run directory")
            return
        teams = self._usable("assign")
        controlled = {t: self.roster.controlled(t) for t in teams}
        if not any(controlled.values()):
            raise ConfigError(
                "assign: every team refused masks (controlled = false); Medusa has "
                "nothing to assign. Use merge = ties (or another baseline) instead"
            )
        self.ownership = assign_ownership(
            self._load_probes(),
            self.shapes,
            controlled,
            policy=self.config.assignment,
            unselected=self.config.unselected,
            seed=self.config.seed,
            progress=True,
        )
        self.ownership.save(self.run_dir.file_path("ownership.safetensors"))
        self.run_dir.record_file("ownership.safetensors")
        counts = self.ownership.owned_counts()
        log.info("assign: owned elements per team %s", counts)

    # ------------------------------------------------------------------ 3 TRAIN
    def train(self, grid: Grid) -> None:
        """Masked fine-tuning: each controlled team gets its own mask and returns owned values;
        an uncontrolled team trains freely and returns its full delta.

        With ``rounds = R > 1`` the budget is split into R rounds. Round r > 1 starts every team
        from the Medusa merge of everything trained so far, with the head it ended round r - 1
        with; ownership is kept. Each round's replies are stored in ``train-round<r>/``; a team's
        branch in ``train/`` is then the sum of its round deltas (its total change from the base),
        so the final merge is the same function of ``train/`` as in a one-round run.

        With ``warm-start`` (the default) a team's branch begins as its stored probe values on
        the elements it owns: round 1 starts from their merge, each team with the head its probe
        left at its site, and the rounds train ``epochs - probe-epochs``.
        """
        assert self.ownership is not None  # set by assign()
        rounds = self.config.rounds
        if rounds == 1 and not self.config.warm:
            self._train_round(grid, "train", 1, None, {})
            self._load_branches("train", self.masked)
            return
        total: dict[str, StateDict] = self._warm_totals() if self.config.warm else {}
        metrics: dict[str, dict[str, float]] = {}
        last = Branches()
        for r in range(1, rounds + 1):
            stage = f"train-round{r}"
            start = self._round_start(total) if total else None
            self._train_round(grid, stage, r, start, last.heads)
            last = Branches()
            self._load_branches(stage, last)
            for team, delta in last.deltas.items():
                total[team] = add_round(total.get(team), delta)
                metrics[team] = metrics.get(team, {}) | last.metrics[team]
            log.info("train: round %d/%d done (%d teams)", r, rounds, len(last.deltas))
        for team in self._usable("train"):
            if team not in last.deltas:
                continue
            self.run_dir.write_tensors(f"train/{team}.safetensors", total[team])
            if last.heads.get(team):
                self.run_dir.write_tensors(f"train/{team}.head.safetensors", last.heads[team])
            self.run_dir.write_json(f"train/{team}.metrics.json", metrics[team])
        self._load_branches("train", self.masked)

    def _warm_totals(self) -> dict[str, StateDict]:
        """Each team's branch before round 1 of a warm start: its stored probe values on the
        elements it owns (every probe value for an uncontrolled team), dense."""
        assert self.ownership is not None
        totals = {}
        for team, sparse in self._load_probes().items():
            mask = self.ownership.mask(team) if self.roster.controlled(team) else None
            totals[team] = owned_probe(sparse, mask)
        return totals

    def _round_start(self, total: dict[str, StateDict]) -> StateDict:
        """Shared weights the next round starts from: the plain Medusa merge (scale 1) of every
        active team's total delta so far."""
        deltas = {t: d for t, d in total.items() if t in self.roster.active}
        uncontrolled = [t for t in deltas if not self.roster.controlled(t)]
        return round_start(self.base_state, deltas, uncontrolled)

    def _train_round(
        self,
        grid: Grid,
        stage: str,
        r: int,
        start: StateDict | None,
        heads: dict[str, StateDict],
    ) -> None:
        """One round of TRAIN: ask every team without a stored reply, store what comes back."""
        assert self.ownership is not None
        cfg = self.config
        teams = self._usable(stage)
        todo = [t for t in teams if not self._stored(t, stage, f"{stage}/{t}.safetensors")]
        masks = {t: self.ownership.mask(t) for t in teams if self.roster.controlled(t)}
        start_arrays = codec.encode_dense(start) if start is not None else None
        branch = "train" if r == cfg.rounds else f"train-round{r}"
        settings = self._train_settings() | {
            "epochs": cfg.round_epochs,
            "max-steps": cfg.round_max_steps,
            "budget-epochs": cfg.epochs,  # the whole budget: what the floor head trains for
            "budget-max-steps": cfg.max_steps,
            "round": r,
            "rounds": cfg.rounds,
            "branch": branch,
            "head-from": f"train-round{r - 1}" if r > 1 else ("probe" if cfg.warm else ""),
            "masked-lr-scale": cfg.masked_lr_scale,  # read by controlled teams only
        }

        def build(team: str):  # type: ignore[no-untyped-def]
            records = {}
            sent = 0
            if team in masks:
                mask_arrays = codec.encode_mask(masks[team])
                records[ARRAYS_KEY] = record_from_arrays(mask_arrays)
                sent += codec.payload_nbytes(mask_arrays)
            if start_arrays is not None:
                records[START_KEY] = record_from_arrays(start_arrays)
                sent += codec.payload_nbytes(start_arrays)
            if heads.get(team):
                records[HEAD_KEY] = record_from_arrays(codec.encode_dense(heads[team]))
            self._count(team, stage, sent=sent, received=0)
            return request(settings | {"controlled": team in masks}, **records)

        replies = exchange(
            grid,
            self.roster,
            stage,
            MSG_TRAIN,
            build,
            cfg.stage_timeout_s,
            teams=todo,
            on_rejection=self._reject,
        )
        for team, reply in replies.items():
            self._store_branch(team, stage, reply, masks.get(team))

    def train_free(self, grid: Grid) -> None:
        """Unmasked fine-tuning for the post-hoc baselines (same budget as TRAIN)."""
        teams = self._usable("baseline")
        todo = [t for t in teams if not self._stored(t, "baseline", f"baseline/{t}.safetensors")]
        settings = self._train_settings() | {"controlled": False}
        replies = exchange(
            grid,
            self.roster,
            "baseline",
            MSG_FREE,
            lambda _t: request(settings),
            self.config.stage_timeout_s,
            teams=todo,
            on_rejection=self._reject,
        )
        for team, reply in replies.items():
            self._store_branch(team, "baseline", reply, None)
        self._load_branches("baseline", self.free)

    def _store_branch(
        self, team: str, stage: str, reply: Message, mask: dict[str, torch.Tensor] | None
    ) -> None:
        """Validate one TRAIN reply completely, then store it (payload, head, metrics)."""
        try:
            self._check_sender(team, reply)
            arrays = arrays_from_record(reply.content[ARRAYS_KEY])
            limit = self.max_payload_bytes
            if mask is not None:  # controlled: owned values only, in mask order
                delta = codec.decode_owned_values(arrays, mask, team=team, max_bytes=limit)
            else:
                delta = codec.decode_dense(arrays, self.shapes, team=team, max_bytes=limit)
            head = (
                codec.decode_dense(
                    arrays_from_record(reply.content[HEAD_KEY]), None, team=team, max_bytes=limit
                )
                if HEAD_KEY in reply.content
                else {}
            )
            metrics = dict(reply.content[METRICS_KEY]) if METRICS_KEY in reply.content else {}
        except (MedusaError, KeyError) as exc:
            self._drop(team, stage, f"payload rejected: {exc}")
            return
        self.run_dir.write_tensors(f"{stage}/{team}.safetensors", delta)
        if head:
            self.run_dir.write_tensors(f"{stage}/{team}.head.safetensors", head)
        self.run_dir.write_json(f"{stage}/{team}.metrics.json", metrics)
        prev = self.bytes.get(team, {}).get(stage, {}).get("sent", 0)
        self._count(team, stage, sent=prev, received=codec.payload_nbytes(arrays))

    def _load_branches(self, stage: str, into: Branches) -> None:
        for team in self._usable(stage):
            if not self.run_dir.exists(f"{stage}/{team}.safetensors"):
                continue
            into.deltas[team], _ = self.run_dir.read_tensors(f"{stage}/{team}.safetensors")
            if self.run_dir.exists(f"{stage}/{team}.head.safetensors"):
                into.heads[team], _ = self.run_dir.read_tensors(f"{stage}/{team}.head.safetensors")
            into.metrics[team] = self.run_dir.read_json(f"{stage}/{team}.metrics.json")

    def _check_sender(self, team: str, reply: Message) -> None:
        """The reply must name the team and the base fingerprint it was trained from."""
        facts = dict(reply.content[CONFIG_KEY]) if CONFIG_KEY in reply.content else {}
        if facts.get("team") != team:
            raise PayloadError(
                f"reply names team {facts.get('team')!r}, expected {team!r} (the "
                "team registered for this node); payload rejected"
            )
        if facts.get("fingerprint") != self.fingerprint:
            raise PayloadError(
                f"payload was made from base {str(facts.get('fingerprint'))[:12]}..., expected "
                f"the run's base {self.fingerprint[:12]}...; payload rejected, other teams "
                "unaffected"
            )

    def _stored(self, team: str, stage: str, relpath: str) -> bool:
        """Whether ``relpath`` is stored intact. A file that fails its hash check is removed
        (and the team asked again), never used."""
        if not self.run_dir.exists(relpath):
            return False
        if self.run_dir.exists(relpath, verify=True):
            return True
        reason = f"stored {relpath} failed its sha256 check; removed, the team is asked again"
        log.warning("%s: %s", stage, reason)
        self._reject(team, stage, reason)
        self.run_dir.remove(relpath)
        return False

    def _drop(self, team: str, stage: str, reason: str) -> None:
        self._reject(team, stage, reason)
        self.roster.drop(team, stage, reason)

    def _train_settings(self) -> dict[str, object]:
        c = self.config
        return {
            "model": c.model,
            "model-family": c.model_family,
            "method": c.method,
            "epochs": c.epochs,
            "max-steps": c.max_steps,
            "lr": c.lr,
            "batch-size": c.batch_size,
            "max-length": c.max_length,
            "max-train": c.max_train,
            "max-eval": c.max_eval,
            "seed": c.seed,
            "eval-before": c.eval_before,
        }

    # ------------------------------------------------------------------ 4 MERGE
    def merge(self) -> None:
        """Merge the stored branches with the run's method and every compared baseline."""
        uncontrolled = [t for t in self.roster.active if not self.roster.controlled(t)]
        choices: list[tuple[MergeChoice, Branches]] = []
        if self.config.uses_ownership:
            choices.append((self.config.merge, self.masked))
        choices += [
            (c, self.free)
            for c in (
                (self.config.merge,) if not self.config.uses_ownership else self.config.compare
            )
        ]
        for choice, branches in choices:
            deltas = {t: d for t, d in branches.deltas.items() if t in self.roster.active}
            if not deltas:
                log.warning("merge: no branch to merge for %s", choice.label)
                continue
            spec = _merge_spec(choice, self.config.seed)
            merged, stats = merge_states_with_report(
                self.base_state,
                deltas,
                spec,
                uncontrolled=uncontrolled if choice.method == "medusa" else (),
                progress=True,
            )
            self.merged[choice.label] = merged
            self.merge_stats[choice.label] = stats
            self._save_merged(choice.label, merged, branches, main=self._is_main(choice.label))
            log.info("merge: %s merged %d branches", choice.label, len(deltas))

    def _save_merged(self, label: str, merged: StateDict, branches: Branches, main: bool) -> None:
        """Store the merged shared space; for the run's main method also one Hugging Face
        directory (or PEFT adapter directory) per team: merged shared weights + its own head."""
        self.run_dir.write_tensors(
            f"merged/{slug(label)}/shared.safetensors",
            merged,
            metadata={"fingerprint": self.fingerprint, "method": label},
        )
        if not main:
            return
        for team in self.roster.active:
            head = branches.heads.get(team)
            refit = f"eval/{slug(label)}/{team}.head.safetensors"  # stored by an earlier EVAL
            if head and self.run_dir.exists(refit, verify=True):
                head, _ = self.run_dir.read_tensors(refit)
            if self.base.is_classifier and not head:
                continue  # the team keeps its head private (share-head = false)
            self._save_team_dir(label, team, merged, head)

    def _is_main(self, label: str) -> bool:
        """Whether ``label`` is the run's own merge (the one exported per team)."""
        return label == self.config.merge.label

    def _save_team_dir(
        self, label: str, team: str, merged: StateDict, head: StateDict | None
    ) -> None:
        """``merged/<method>/<team>/``: a Hugging Face (or PEFT adapter) directory of the merged
        shared weights with the team's head."""
        labels = (
            tuple(self.roster.info[team].get("labels", ())) if self.base.is_classifier else None
        )
        out = self.run_dir.file_path(f"merged/{slug(label)}/{team}")
        save_model_dir(self.base, out, merged, head or None, labels=labels or None)
        for path in sorted(p for p in out.rglob("*") if p.is_file()):
            self.run_dir.record_file(path.relative_to(self.run_dir.path).as_posix())

    # ------------------------------------------------------------------ 5 EVAL
    def evaluate(self, grid: Grid) -> None:
        """Each team scores every merged model on its own held-out data; only metrics return.

        Metrics already stored (a resumed run) are read back instead of asked again."""
        for label, merged in self.merged.items():
            branch = "train" if label.startswith("medusa") else "baseline"
            heads = (self.masked if branch == "train" else self.free).heads
            scores = self.eval_metrics.setdefault(label, {})
            todo = []
            for team in self._usable("eval"):
                rel = f"eval/{slug(label)}/{team}.json"
                if self.run_dir.exists(rel, verify=True):
                    scores[team] = self.run_dir.read_json(rel)
                else:
                    todo.append(team)
            if not todo:
                continue
            arrays = codec.encode_dense(merged)
            build = partial(
                self._eval_request, label=label, branch=branch, arrays=arrays, heads=heads
            )
            replies = exchange(
                grid,
                self.roster,
                "eval",
                MSG_EVAL,
                build,
                self.config.stage_timeout_s,
                teams=todo,
                on_rejection=self._reject,
            )
            for team, reply in replies.items():
                try:
                    metrics = _finite_metrics(reply)
                except (PayloadError, KeyError) as exc:
                    self._drop(team, "eval", f"metrics rejected: {exc}")
                    continue
                scores[team] = metrics
                try:
                    refit = self._refit_head(team, reply, heads.get(team))
                except MedusaError as exc:  # the metrics stand; only the head is not kept
                    self._reject(team, "eval", f"re-fitted head rejected: {exc}")
                    refit = None
                if refit:
                    self.run_dir.write_tensors(f"eval/{slug(label)}/{team}.head.safetensors", refit)
                    if self._is_main(label):  # the exported team model gets the re-fitted head
                        self._save_team_dir(label, team, merged, refit)
                self.run_dir.write_json(f"eval/{slug(label)}/{team}.json", metrics)
                entry = self.bytes.setdefault(team, {}).setdefault(
                    "eval", {"sent": 0, "received": 0, "dense_fp32": 0}
                )
                entry["sent"] += codec.payload_nbytes(arrays)
                entry["dense_fp32"] += codec.dense_fp32_nbytes(self.shapes)

    def _refit_head(self, team: str, reply: Message, head: StateDict | None) -> StateDict | None:
        """The head a team re-fitted on a merged model (refit-epochs > 0, shared heads only),
        checked against the shapes of the head it trained with when the coordinator has it."""
        if self.config.refit_epochs <= 0 or HEAD_KEY not in reply.content:
            return None
        shapes = {n: tuple(t.shape) for n, t in head.items()} if head else None
        return codec.decode_dense(
            arrays_from_record(reply.content[HEAD_KEY]),
            shapes,
            team=team,
            max_bytes=self.max_payload_bytes,
        )

    def _eval_request(
        self, team: str, *, label: str, branch: str, arrays: Payload, heads: dict[str, StateDict]
    ) -> RecordDict:
        """Merged shared weights, plus the team's own head if it shared one (so a restarted
        team site can still score)."""
        records = {ARRAYS_KEY: record_from_arrays(arrays)}
        if heads.get(team):
            records[HEAD_KEY] = record_from_arrays(codec.encode_dense(heads[team]))
        settings = self._train_settings() | {
            "method-label": label,
            "branch": branch,
            "refit-epochs": self.config.refit_epochs,
            "refit-lr": self.config.refit_lr,
        }
        return request(settings, **records)


def _finite_metrics(reply: Message) -> dict[str, float]:
    """A reply's metrics as finite floats; PayloadError naming the first bad one."""
    out = {}
    for key, value in dict(reply.content[METRICS_KEY]).items():
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise PayloadError(f"metric {key!r}: expected a finite number, found {value!r}")
        out[key] = float(value)
    return out


def _merge_spec(choice: MergeChoice, seed: int) -> MergeSpec:
    params = dict(choice.params)
    if "seed" in params:
        params["seed"] = int(params["seed"])
    return MergeSpec(method=choice.method, **({"seed": seed} | params))  # type: ignore[arg-type]


def slug(label: str) -> str:
    """A directory name for a method label: ``ties(density=0.2)`` -> ``ties-density0.2``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", label.replace("=", "")).strip("-")


def model_spec(config: RunConfig) -> ModelSpec:
    """The ModelSpec every site builds for this run (the coordinator's own base included)."""
    return ModelSpec(source=config.model, family=config.model_family, method=config.method)


__all__ = ["MedusaStrategy", "model_spec"]
