"""``medusa simulate``: a local multi-team Medusa run on Flower's simulation engine.

Example (the README's main command; about 10 minutes on 2 CPU cores)::

    medusa simulate --teams movie,tweet,bbc --compare ties,task_arithmetic --out runs/demo

prints the per-team table (accuracy before, alone, merged by Medusa and by each compared
post-hoc baseline) and writes the run directory: ownership map, payloads, merged models as
Hugging Face directories, report.json, report.md and plots/*.png.
"""

from __future__ import annotations

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
    method: Annotated[str, Option(help="full | lora | ia3")] = "full",
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
        str, Option(help="What one owner gets: element | lora-rank (whole LoRA rank components).")
    ] = "element",
    probe_density: Annotated[float, Option(help="Top-d fraction of each probe delta.")] = 0.2,
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
    refit_epochs: Annotated[
        float | None,
        Option(help="Head re-fit epochs on each merged model, 0 = off (default: run config's)."),
    ] = None,
    batch_size: Annotated[int, Option(help="Examples per step.")] = 16,
    max_length: Annotated[int, Option(help="Tokens per example.")] = 64,
    max_train: Annotated[int, Option(help="Training examples per team.")] = 400,
    max_eval: Annotated[int, Option(help="Test examples per team.")] = 300,
    eval_before: Annotated[bool, Option(help="Measure the floor (head only).")] = True,
    min_teams: Annotated[int, Option(help="Stop if fewer teams are usable.")] = 2,
    allow_uncontrolled: Annotated[
        bool, Option(help="Let teams refuse masks (false: such a team is left out at HELLO).")
    ] = True,
    seed: Annotated[int, Option(help="Seed of splits, probe draws, training.")] = 0,
    backend: Annotated[str, Option(help="ray (Flower's simulation engine) | inprocess")] = "ray",
    store: Annotated[
        str,
        Option(
            help="History store the run is imported into (default: $MEDUSA_STORE or "
            "./runs/.medusa-store, where `medusa log` reads too; off = none)."
        ),
    ] = "",
) -> None:
    """Simulate a multi-team Medusa run locally and print the per-team table."""
    from medusa_fed.errors import MedusaError
    from medusa_fed.report import render_table
    from medusa_fed.run_config import RunConfig
    from simulations.simulate import parse_teams
    from simulations.simulate import simulate as run

    try:
        config = RunConfig.from_mapping(
            {
                "model": model,
                "method": method,
                "merge": merge,
                "compare": compare,
                "federated": federated,
                "assignment": assignment,
                "unselected": unselected,
                "ownership-unit": ownership_unit,
                "probe-density": probe_density,
                "probe-epochs": probe_epochs,
                "epochs": epochs,
                "lr": lr,
                "batch-size": batch_size,
                "max-length": max_length,
                "max-train": max_train,
                "max-eval": max_eval,
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
        )
        team_list = parse_teams(teams, [u.strip() for u in uncontrolled.split(",") if u.strip()])
        if backend not in ("ray", "inprocess"):
            raise typer.BadParameter(f"--backend: expected ray or inprocess, found {backend!r}")
        report = run(config, team_list, backend=backend)  # type: ignore[arg-type]
    except MedusaError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo("")
    typer.echo(render_table(report))
    typer.echo(f"\nrun directory: {out} (report.md, report.json, plots/, merged/)")
