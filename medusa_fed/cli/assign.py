"""``medusa assign``: an ownership map from the teams' probe files, from the shell.

What the coordinator does in its ASSIGN stage, for trying Medusa by hand::

    medusa train --task movie --method lora --probe --out runs/p/movie
    medusa train --task tweet --method lora --probe --out runs/p/tweet
    medusa assign --probe movie=runs/p/movie/probe.safetensors \\
                  --probe tweet=runs/p/tweet/probe.safetensors --method lora \\
                  --out runs/p/ownership.safetensors
    medusa train --task movie --method lora --ownership runs/p/ownership.safetensors \\
                 --team movie --out runs/p/movie-masked

The map covers the base's shared space (the encoder for full fine-tuning, the adapter elements for
LoRA / IA3), so ``--model`` and ``--method`` must be the ones the probes were made with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from typer import Option

from medusa_fed.cli.app import app


def parse_probe_args(items: list[str]) -> dict[str, Path]:
    """``team=path`` pairs -> {team: path}; BadParameter naming the first bad one."""
    out: dict[str, Path] = {}
    for item in items:
        team, sep, path = item.partition("=")
        team = team.strip()
        if not sep or not team or not path.strip():
            raise typer.BadParameter(f"--probe: expected TEAM=PATH, found {item!r}")
        if team in out:
            raise typer.BadParameter(f"--probe: team {team!r} given twice")
        out[team] = Path(path.strip())
    if len(out) < 2:
        raise typer.BadParameter(f"--probe: expected at least two teams, found {len(out)}")
    return out


@app.command()
def assign(
    probe: Annotated[
        list[str], Option(help="TEAM=PATH of a probe.safetensors (medusa train --probe); repeat.")
    ],
    out: Annotated[Path, Option(help="Ownership map file to write (safetensors).")],
    model: Annotated[str, Option(help="Bundled model or local HF directory.")] = "all-MiniLM-L6-v2",
    family: Annotated[str, Option(help="encoder-classifier | causal-lm")] = "encoder-classifier",
    method: Annotated[str, Option(help="full | lora | ia3")] = "full",
    uncontrolled: Annotated[str, Option(help="Comma-separated teams that refuse masks.")] = "",
    policy: Annotated[str, Option(help="proportional | argmax | balanced")] = "proportional",
    unselected: Annotated[str, Option(help="Elements no probe selected: random | frozen")] = (
        "random"
    ),
    seed: Annotated[int, Option(help="Seed of the owner draws.")] = 0,
) -> None:
    """Assign every shared element one owner from the teams' probe deltas (GPA)."""
    from medusa_fed.errors import MedusaError
    from medusa_fed.ownership import assign_ownership
    from medusa_fed.training import export
    from medusa_fed.training.config import ModelSpec
    from medusa_fed.training.models import load_base

    paths = parse_probe_args(probe)
    free = {u.strip() for u in uncontrolled.split(",") if u.strip()}
    unknown = sorted(free - set(paths))
    if unknown:
        raise typer.BadParameter(f"--uncontrolled: {unknown} have no --probe (teams {list(paths)})")
    try:
        spec = ModelSpec(source=model, family=family, method=method)  # type: ignore[arg-type]
        shapes = load_base(spec).shapes
        probes = {}
        for team, path in paths.items():
            if not path.is_file():
                raise MedusaError(f"--probe {team}={path}: expected a probe file, found none")
            probes[team] = export.load_sparse(path)
        ownership = assign_ownership(
            probes,
            shapes,
            {t: t not in free for t in paths},
            policy=policy,  # type: ignore[arg-type]
            unselected=unselected,  # type: ignore[arg-type]
            seed=seed,
            progress=True,
        )
    except MedusaError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    out.parent.mkdir(parents=True, exist_ok=True)
    ownership.save(out)
    total = sum(t.numel() for t in ownership.owners.values())
    shares = ", ".join(f"{t} {n / total:.1%}" for t, n in ownership.owned_counts().items())
    typer.echo(f"ownership of {total:,} elements ({spec.method}): {shares}; written {out}")
