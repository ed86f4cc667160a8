"""``medusa simulate``: a local multi-team Medusa run on Flower's simulation engine.

Example (the README's main command; about 7 minutes on 2 CPU cores)::

    medusa simulate --teams movie,tweet,bbc --compare ties,task_arithmetic --out runs/demo

sends the Flower app to a local simulation SuperLink with ``flwr run`` (simulations/flower_run.py),
shows one live display per stage and a line per finished stage, then prints the per-team table
(accuracy before, alone, merged by Medusa and by each compared post-hoc baseline) and writes the
run directory: ownership map, payloads, merged models as Hugging Face directories, report.json,
report.md, plots/*.png and log.txt (every log line of every process).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Annotated

import typer
from typer import Option

from medusa_fed.cli.app import app


@app.command()
def simulate(
    teams: Annotated[
        str,
        Option(
            help="Comma-separated teams: bundled task (movie, tweet, spam, "
            "bbc) or name=task / name=/path/data.csv."
        ),
    ] = "movie,tweet,bbc",
    uncontrolled: Annotated[str, Option(help="Comma-separated teams that refuse masks.")] = "",
    out: Annotated[Path, Option(help="Run directory.")] = Path("runs/demo"),
    model: Annotated[str, Option(help="Bundled model or local HF directory.")] = "all-MiniLM-L6-v2",
    method: Annotated[
        str | None, Option(help="full | lora | ia3 (default: lora for a causal LM, else full)")
    ] = None,
    merge: Annotated[
        str,
        Option(
            help="medusa, or a baseline (ties, task_arithmetic, linear, "
            "dare_linear, dare_task_arithmetic, dare_ties)."
        ),
    ] = "medusa",
    compare: Annotated[
        str,
        Option(
            help="Baselines also run (unmasked branches), comma-separated; "
            "settings as ties:density=0.2:scale=1."
        ),
    ] = "",
    federated: Annotated[
        str,
        Option(
            help="Federated anchors with the same rounds: linear (FedAvg, personal heads), "
            "ties, ... each round, comma-separated."
        ),
    ] = "",
    assignment: Annotated[str, Option(help="proportional | argmax | balanced")] = "proportional",
    unselected: Annotated[
        str, Option(help="Elements no probe selected: random | frozen")
    ] = "random",
    ownership_unit: Annotated[
        str,
        Option(
            help="What one owner gets: element | lora-rank (whole LoRA rank components) | row "
            "(whole rows of each weight matrix)."
        ),
    ] = "element",
    probe_density: Annotated[float, Option(help="Top-d fraction of each probe delta.")] = 0.2,
    probe_weights: Annotated[
        str, Option(help="What the owner draw compares: rank (default) | magnitude")
    ] = "rank",
    probe_scores: Annotated[
        str,
        Option(help="What ranks a probe's entries: delta (default) | fisher (sqrt F x |delta|)"),
    ] = "delta",
    dp_clip: Annotated[
        float, Option(help="Privacy option: L2 clip of each site upload (0 = off).")
    ] = 0.0,
    dp_noise: Annotated[
        float, Option(help="Privacy option: Gaussian noise std as a multiple of --dp-clip.")
    ] = 0.0,
    probe_epochs: Annotated[float, Option(help="Probe budget in epochs.")] = 1.0,
    epochs: Annotated[
        float, Option(help="Fine-tuning epochs per team (all rounds; the probe's too if warm).")
    ] = 2.0,
    rounds: Annotated[
        int | None,
        Option(help="Rounds the epochs are split into (default: the run config's)."),
    ] = None,
    warm_start: Annotated[
        bool | None,
        Option(
            "--warm-start/--no-warm-start",
            help="Round 1 continues from the owned probe values; the probe counts in --epochs "
            "(default: the run config's).",
        ),
    ] = None,
    lr: Annotated[float, Option(help="Learning rate (0 = 5e-5 full, 1e-3 LoRA/IA3).")] = 0.0,
    masked_lr_scale: Annotated[
        float | None,
        Option(
            help="Masked training's shared-tensor lr is lr times this; 1 = unchanged "
            "(default: the run config's)."
        ),
    ] = None,
    masked_lr_choices: Annotated[
        str | None,
        Option(
            help="'1|2|3': each team trains every round at each masked lr scale and keeps the "
            "one its validation split scores best (default: off)."
        ),
    ] = None,
    downlink: Annotated[
        str | None,
        Option(
            help="lacking: a round's start costs a team only the other teams' values; dense: the "
            "whole weights (default: the run config's)."
        ),
    ] = None,
    downlink_dtype: Annotated[
        str | None,
        Option(help="fp32 (bit-exact), fp16 or bf16 for the lacking down-link (default: fp32)."),
    ] = None,
    refit_epochs: Annotated[
        float | None,
        Option(help="Head re-fit epochs on each merged model, 0 = off (default: run config's)."),
    ] = None,
    batch_size: Annotated[int, Option(help="Examples per step.")] = 16,
    max_length: Annotated[int, Option(help="Tokens per example.")] = 64,
    max_train: Annotated[int, Option(help="Training examples per team.")] = 400,
    max_eval: Annotated[int, Option(help="Test examples per team.")] = 300,
    class_balance: Annotated[
        bool,
        Option(help="The capped subsets take every class equally, not in proportion."),
    ] = False,
    eval_before: Annotated[bool, Option(help="Measure the floor (head only).")] = True,
    min_teams: Annotated[int, Option(help="Stop if fewer teams are usable.")] = 2,
    allow_uncontrolled: Annotated[
        bool, Option(help="Let teams refuse masks (false: such a team is left out at HELLO).")
    ] = True,
    seed: Annotated[int, Option(help="Seed of splits, probe draws, training.")] = 0,
    backend: Annotated[
        str,
        Option(
            help="ray (flwr run on a local simulation SuperLink: Flower's engine, Ray) | "
            "inprocess (no Flower, no Ray)"
        ),
    ] = "ray",
    store: Annotated[
        str,
        Option(
            help="History store the run is imported into (default: $MEDUSA_STORE or "
            "./runs/.medusa-store, where `medusa log` reads too; off = none)."
        ),
    ] = "",
) -> None:
    """Simulate a multi-team Medusa run locally and print the per-team table.

    The terminal shows one live display per stage and a line per finished stage, then the
    table; every log line (Flower, Ray, training steps) goes to <out>/log.txt (-v: to the
    terminal too).
    """
    from medusa_fed.cli.app import Options, log_to_file
    from medusa_fed.cli.progress_view import ProgressView, clock
    from medusa_fed.errors import MedusaError
    from medusa_fed.report import render_table
    from medusa_fed.run_config import RunConfig
    from medusa_fed.rundir.run_dir import RunDir
    from medusa_fed.training.config import default_method
    from simulations.simulate import parse_teams, preflight
    from simulations.simulate import simulate as run

    try:
        config = RunConfig.from_mapping(
            {
                "model": model,
                "method": method or default_method(model),
                "merge": merge,
                "compare": compare,
                "federated": federated,
                "assignment": assignment,
                "unselected": unselected,
                "ownership-unit": ownership_unit,
                "probe-density": probe_density,
                "probe-weights": probe_weights,
                "probe-scores": probe_scores,
                "dp-clip": dp_clip,
                "dp-noise": dp_noise,
                "probe-epochs": probe_epochs,
                "epochs": epochs,
                "lr": lr,
                "batch-size": batch_size,
                "max-length": max_length,
                "max-train": max_train,
                "max-eval": max_eval,
                "class-balance": class_balance,
                "eval-before": eval_before,
                "min-teams": min_teams,
                "allow-uncontrolled": allow_uncontrolled,
                "seed": seed,
                "out-dir": str(out),
                "store": store,
            }
            | ({"rounds": rounds} if rounds is not None else {})
            | ({"refit-epochs": refit_epochs} if refit_epochs is not None else {})
            | ({"warm-start": warm_start} if warm_start is not None else {})
            | ({"masked-lr-scale": masked_lr_scale} if masked_lr_scale is not None else {})
            | ({"masked-lr-choices": masked_lr_choices} if masked_lr_choices is not None else {})
            | ({"downlink": downlink} if downlink is not None else {})
            | ({"downlink-dtype": downlink_dtype} if downlink_dtype is not None else {})
        )
        team_list = parse_teams(teams, [u.strip() for u in uncontrolled.split(",") if u.strip()])
        if backend not in ("ray", "inprocess"):
            raise typer.BadParameter(f"--backend: expected ray or inprocess, found {backend!r}")
        preflight(team_list)
        RunDir(out)  # a folder this process can write, before anything starts
        log_file = out / "log.txt"
        started = time.monotonic()
        typer.echo(
            f"medusa simulate: {len(team_list)} teams "
            f"({', '.join(t.name + ('' if t.controlled else ' uncontrolled') for t in team_list)})"
            f" on {'Flower (flwr run, local simulation)' if backend == 'ray' else 'in-process'}"
            f"; full log: {log_file}"
        )
        view = contextlib.nullcontext(None) if Options.verbose else ProgressView()
        with log_to_file(log_file), view as display:
            report = run(
                config,
                team_list,
                backend="ray" if backend == "ray" else "inprocess",
                on_event=display,
                log_file=log_file,
                echo=Options.verbose,
            )
    except MedusaError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"finished in {clock(time.monotonic() - started)}\n")
    typer.echo(render_table(report))
    typer.echo(f"\nrun directory: {out} (report.md, report.json, plots/, merged/, log.txt)")
