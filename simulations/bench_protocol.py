"""Benchmark: Medusa's protocol overhead, as wall time over FedAvg's for the same teams and budget.

One in-process pipeline run trains the same teams twice with the same budget and rounds: Medusa
(probe, ownership assignment, masked rounds from each merge, the Medusa merge) and the ``federated``
anchor ``linear`` (FedAvg with personal heads: every team trains unmasked from the last round's
average, merged each round). Each side's time is its stages' wall time plus the EVAL exchanges of
its own merged model; the EVAL stage's coordinator-side work (merging nothing, encoding what each
team lacks, fingerprints) is all charged to Medusa. HELLO (shared) and the export are left out.
Torch runs on one thread (``MEDUSA_NUM_THREADS=1``). It prints each side's seconds and the ratio.

    MEDUSA_NUM_THREADS=1 python -m simulations.bench_protocol --teams movie,tweet,bbc
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path

import torch

from medusa_fed.pipeline import run_pipeline
from medusa_fed.pipeline.transport import Failure, Transport
from medusa_fed.protocol import EvalRequest, Reply, Request
from medusa_fed.run_config import RunConfig
from medusa_fed.training import load_base
from simulations.simulate import (
    add_budget_arguments,
    budget_settings,
    inprocess_transport,
    parse_teams,
)
from strategies.medusa_strategy import model_spec

MEDUSA_STAGES = ("probe", "assign", "train", "merge")
FEDAVG = "fed-linear"  # the anchor's label (pipeline.federated)


class TimedTransport:
    """A transport that adds up the wall time of EVAL exchanges per merged model."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self.eval_s: dict[str, float] = {}

    def nodes(self) -> list[int]:
        return self.inner.nodes()

    def exchange(
        self, stage: str, requests: Mapping[int, Request], timeout_s: float
    ) -> list[tuple[int, Reply | Failure]]:
        started = time.perf_counter()
        out = self.inner.exchange(stage, requests, timeout_s)
        labels = {r.method_label for r in requests.values() if isinstance(r, EvalRequest)}
        for label in labels:  # one label per EVAL exchange
            self.eval_s[label] = self.eval_s.get(label, 0.0) + time.perf_counter() - started
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_budget_arguments(parser, max_train=120, max_eval=100)
    parser.add_argument("--downlink", default="lacking", choices=("lacking", "dense"))
    parser.add_argument("--out", default="runs/bench-protocol")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("MEDUSA_NUM_THREADS", "1")
    torch.set_num_threads(1)
    config = RunConfig.from_mapping(
        {
            **budget_settings(args),
            "federated": "linear",
            "downlink": args.downlink,
            "out-dir": str(Path(args.out)),
        }
    )
    transport = TimedTransport(inprocess_transport(parse_teams(args.teams)))
    outcome = run_pipeline(config, load_base(model_spec(config)), transport, history=False)
    t = outcome.timings_s
    coordinator_eval = t["eval"] - sum(transport.eval_s.values())  # both labels' preparation
    medusa = sum(t[s] for s in MEDUSA_STAGES) + transport.eval_s["medusa"] + coordinator_eval
    fedavg = t["federated"] + transport.eval_s[FEDAVG]
    print(f"stages (s): {t}")
    print(f"EVAL exchanges (s): { {k: round(v, 2) for k, v in transport.eval_s.items()} }")
    print(
        f"medusa {medusa:.1f} s (probe {t['probe']:.1f} + assign {t['assign']:.1f} + train "
        f"{t['train']:.1f} + merge {t['merge']:.1f} + eval {transport.eval_s['medusa']:.1f} + "
        f"coordinator eval {coordinator_eval:.1f})"
    )
    print(
        f"fedavg {fedavg:.1f} s (rounds + merges {t['federated']:.1f} + eval "
        f"{transport.eval_s[FEDAVG]:.1f})"
    )
    print(f"medusa / fedavg wall time: {medusa / fedavg:.3f}")
    load = os.getloadavg()
    print(f"load average during the run (1/5/15 min): {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
