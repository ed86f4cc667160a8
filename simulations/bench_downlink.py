"""Benchmark: down-link bytes per team and round against dense fp32, before and after, in one run.

The same teams, seed and budget run once per down-link: ``dense`` (every team gets the dense fp32
start each round and the dense merge in EVAL: the send before issue 21), ``lacking`` at fp32 (only
the other teams' owned values; the results must be the dense send's bit for bit) and at fp16 and
bf16 (their difference from the base, half the bytes, lossy). For each it prints, per team, the
bytes sent in each TRAIN round and in EVAL over a dense fp32 copy (the report's ``bytes`` table),
and the Medusa merge's test accuracy per team and on average; then whether the fp32 merge equals
the dense send's bit for bit.

    python -m simulations.bench_downlink --teams movie,tweet,bbc --out runs/bench-downlink
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from medusa_fed.run_config import RunConfig
from medusa_fed.rundir import RunDir
from medusa_fed.training import load_base
from medusa_fed.training.config import ModelSpec
from simulations.simulate import add_budget_arguments, budget_settings, parse_teams, simulate

MODES: dict[str, dict[str, str]] = {
    "dense": {"downlink": "dense"},
    "lacking-fp32": {"downlink": "lacking", "downlink-dtype": "fp32"},
    "lacking-fp16": {"downlink": "lacking", "downlink-dtype": "fp16"},
    "lacking-bf16": {"downlink": "lacking", "downlink-dtype": "bf16"},
}


def run_mode(args: argparse.Namespace, mode: str) -> tuple[dict[str, Any], float]:
    """One in-process run with ``mode``'s down-link; its report and wall seconds."""
    config = RunConfig.from_mapping(
        {
            **budget_settings(args),
            "out-dir": str(Path(args.out) / mode),
            **MODES[mode],
        }
    )
    started = time.monotonic()
    report = simulate(config, parse_teams(args.teams), backend="inprocess")
    return report, time.monotonic() - started


def table(mode: str, report: dict[str, Any], rounds: int) -> list[str]:
    """One line per team: sent / dense per TRAIN round and in EVAL, merged accuracy."""
    lines = []
    for team in report["teams"]:
        stages = report["bytes"].get(team["name"], {})
        cells = []
        for stage in [f"train-round{r}" for r in range(1, rounds + 1)] + ["eval"]:
            b = stages.get(stage if rounds > 1 or stage == "eval" else "train", {})
            ratio = b.get("sent", 0) / b["dense_fp32"] if b.get("dense_fp32") else float("nan")
            cells.append(f"{ratio:8.3f}")
        accuracy = team["metrics"]["merged"]["medusa"]["accuracy"]
        share = team.get("owned_share", float("nan"))
        lines.append(
            f"{mode:13s} {team['name']:8s} {share:6.3f} " + " ".join(cells) + f" {accuracy:8.4f}"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_budget_arguments(parser, max_train=200, max_eval=200)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--out", default="runs/bench-downlink")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    rounds = [f"round{r}" for r in range(1, args.rounds + 1)]
    header = f"{'down-link':13s} {'team':8s} {'owned':>6s} " + " ".join(
        f"{c:>8s}" for c in rounds + ["eval"]
    )
    lines, means = [header + f" {'accuracy':>8s}"], {}
    for mode in modes:
        report, seconds = run_mode(args, mode)
        lines += table(mode, report, args.rounds)
        accs = [t["metrics"]["merged"]["medusa"]["accuracy"] for t in report["teams"]]
        means[mode] = (statistics.fmean(accs), seconds)
    print("down-link bytes sent per team over dense fp32 (per TRAIN round, EVAL), Medusa's test")
    print("accuracy after the run:")
    print("\n".join(lines))
    for mode, (mean, seconds) in means.items():
        print(f"{mode:13s} mean merged accuracy {mean:.4f}  ({seconds:.0f} s)")
    if "dense" in modes:
        base = load_base(ModelSpec(source=args.model)).shared_state()
        compare_merges(Path(args.out), [m for m in modes if m != "dense"], base)


def compare_merges(out: Path, modes: list[str], base: dict[str, torch.Tensor]) -> None:
    """Print how each mode's Medusa merge differs from the dense send's: bit for bit, and the
    largest absolute difference next to the largest change the merge made to the base."""
    merge = "merged/medusa/shared.safetensors"
    dense, _ = RunDir(out / "dense", readonly=True).read_tensors(merge)
    moved = max(float((dense[n] - base[n]).abs().max()) for n in dense)
    for mode in modes:
        merged, _ = RunDir(out / mode, readonly=True).read_tensors(merge)
        same = all(
            torch.equal(dense[n].view(torch.int32), merged[n].view(torch.int32)) for n in dense
        )
        diff = max(float((merged[n] - dense[n]).abs().max()) for n in dense)
        print(
            f"{mode:13s} merge == dense merge bit for bit: {same}; max |difference| {diff:.3g} "
            f"(the dense merge moved the base by up to {moved:.3g})"
        )


if __name__ == "__main__":
    main()
