"""``medusa bench``: merged-model quality of Medusa variants against the post-hoc baselines.

    medusa bench --mode quick --out runs/bench-quick      # 15 minutes on 2 idle cores
    medusa bench --mode full --out runs/bench-full        # every variant, 3 seeds (many hours)
    medusa bench --combine runs/s0,runs/s1 --out runs/all # one report of runs made apart
    medusa bench --medusa-only --variants X --seeds 0 --out runs/x-s0  # add a variant to s0

prints the tables (also in ``results.md``) and writes ``results.json``, ``accuracy.png`` and
``normalized.png`` to ``--out``.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Annotated

import typer
from typer import Option

from medusa_fed.cli.app import app

ADAPTER_LR = 1e-3  # the adapters' default learning rate (TrainConfig.lr_for)


def bench_config(  # type: ignore[no-untyped-def]
    mode: str,
    method: str,
    seeds: str,
    variants: str,
    medusa_only: bool = False,
    model: str = "all-MiniLM-L6-v2",
):
    """The BenchConfig of a mode (``quick`` or ``full``), with optional overrides."""
    from simulations.benchmark import FULL_GRID, BenchConfig
    from simulations.variants import VARIANTS, default_variants

    if mode not in ("quick", "full"):
        raise typer.BadParameter(f"--mode: expected quick or full, found {mode!r}")
    if method not in ("full", "lora", "ia3"):
        raise typer.BadParameter(f"--method: expected full, lora or ia3, found {method!r}")
    cfg = BenchConfig(method=method, model=model)
    if method != "full":
        cfg.lr = ADAPTER_LR  # a fresh adapter learns little at full fine-tuning's 1e-4
    if mode == "full":
        tasks = cfg.teams
        pairs, triples = itertools.combinations(tasks, 2), itertools.combinations(tasks, 3)
        cfg.settings = (*pairs, *triples, tasks)
        cfg.seeds = (0, 1, 2)
        cfg.max_train, cfg.max_eval = 1000, 500
        cfg.max_length = 128
        cfg.grid = FULL_GRID
        # lora-rank owns whole LoRA rank components: a variant of LoRA runs only
        cfg.variants = tuple(
            v for v in VARIANTS.values() if method == "lora" or v.name != "lora-rank"
        )
    else:
        cfg.variants = default_variants()
    if seeds:
        cfg.seeds = tuple(int(s) for s in seeds.split(","))
    if variants:
        unknown = [v for v in variants.split(",") if v not in VARIANTS]
        if unknown:
            raise typer.BadParameter(
                f"--variants: unknown {unknown}; expected some of {', '.join(VARIANTS)}"
            )
        cfg.variants = tuple(VARIANTS[v] for v in variants.split(","))
    cfg.medusa_only = medusa_only
    return cfg


@app.command()
def bench(
    mode: Annotated[str, Option(help="quick (15 min on 2 idle cores) or full")] = "quick",
    out: Annotated[Path, Option(help="Output directory.")] = Path("runs/bench"),
    method: Annotated[
        str, Option(help="full | lora | ia3 (lr 1e-4 for full, 1e-3 for the adapters)")
    ] = "full",
    model: Annotated[
        str, Option(help="Bundled model, smollm2-135m-instruct, or a local HF directory.")
    ] = "all-MiniLM-L6-v2",
    seeds: Annotated[str, Option(help="Comma-separated seeds (default: the mode's).")] = "",
    variants: Annotated[
        str,
        Option(
            help="Comma-separated Medusa variants (default: the mode's); see simulations.variants."
        ),
    ] = "",
    medusa_only: Annotated[
        bool,
        Option(
            "--medusa-only",
            help="Run only the Medusa variants (no ceiling, floor, baselines): to add variants "
            "to earlier runs of the same seeds, then pool them with --combine.",
        ),
    ] = False,
    combine: Annotated[
        str,
        Option(
            help="Comma-separated output directories of earlier runs (e.g. one seed each): "
            "write one report of all their cells to --out instead of running."
        ),
    ] = "",
) -> None:
    """Benchmark merged-model quality on the bundled tasks and write tables and plots."""
    from simulations import bench_report
    from simulations.benchmark import Bench

    if combine:
        try:
            path = bench_report.combine([Path(d) for d in combine.split(",") if d], out)
        except (FileNotFoundError, ValueError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from exc
        typer.echo(path.read_text())
        return

    from medusa_fed.errors import MedusaError

    cfg = bench_config(mode, method, seeds, variants, medusa_only, model)
    try:  # every variant's run config is valid before the first run starts
        for variant in cfg.variants:
            cfg.run_config(cfg.seeds[0], variant, out, compare=False)
    except MedusaError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    cfg.out = str(out)
    started = time.monotonic()
    cells = Bench(
        cfg,
        progress=lambda msg: typer.echo(f"[{time.monotonic() - started:6.0f} s] {msg}", err=True),
    ).run()
    wall = time.monotonic() - started
    path = bench_report.write(out, cells, cfg, wall)
    typer.echo(path.read_text())
    typer.echo(
        f"written: {path}, {out / 'results.json'}, {out / 'accuracy.png'}, {out / 'normalized.png'}"
    )
