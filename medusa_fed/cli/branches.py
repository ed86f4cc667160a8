"""``medusa merge``, ``medusa export``, ``medusa join``: make models from the store's branches.

Examples::

    medusa merge latest:baseline --method ties -o merged-ties    # re-merge a run's branches
    medusa merge e0ae43e0 a5243247 --method dare_ties --drop-rate 0.5 -o out
    medusa merge --config merge.yml -o out                         # mergekit-style YAML
    medusa export f4294b4e --head beta -o beta-model               # any branch or merge
    medusa join f4294b4e --team delta --task delta.csv             # a team joins after a merge

Branches are id prefixes, or ``RUN:baseline`` / ``RUN:train`` for all of a run's unmasked /
masked branches (``RUN`` a run id prefix or ``latest``). Output directories load with
``from_pretrained`` (a PEFT adapter directory for LoRA / IA3 branches).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, cast

import typer
from typer import Argument, Option

from medusa_fed.cli.app import app
from medusa_fed.cli.history import ModelOption, StoreOption, fail, store_dir


def _loader_hint(out: Path) -> str:
    return f"load it with from_pretrained({str(out)!r}) (PeftModel.from_pretrained for adapters)"


@app.command()
def merge(
    branches: Annotated[
        list[str] | None, Argument(help="Branch ids, or RUN:baseline / RUN:train.")
    ] = None,
    method: Annotated[
        str | None,
        Option(
            help="medusa | linear | task_arithmetic | ties | dare_linear | dare_task_arithmetic "
            "| dare_ties | tsv_m | iso_c | iso_cts (settings may follow: ties:density=0.5)"
        ),
    ] = None,
    config: Annotated[
        Path | None, Option(help="mergekit-style YAML (merge_method, parameters, models, head).")
    ] = None,
    out: Annotated[Path | None, Option("--out", "-o", help="Write the merged model here.")] = None,
    head: Annotated[str | None, Option(help="Team whose head the exported model gets.")] = None,
    scale: Annotated[float | None, Option(help="lambda on the merged delta.")] = None,
    density: Annotated[float | None, Option(help="TIES: kept fraction per tensor.")] = None,
    drop_rate: Annotated[float | None, Option(help="DARE: drop probability.")] = None,
    seed: Annotated[int | None, Option(help="DARE: seed of the drop masks.")] = None,
    store: StoreOption = None,
    model: ModelOption = None,
    force: Annotated[bool, Option("--force", help="Overwrite -o if it holds files.")] = False,
) -> None:
    """Merge stored branches with any merge method; record the merge; optionally export it."""
    from medusa_fed.errors import MedusaError
    from medusa_fed.history.branches import Store
    from medusa_fed.history.remerge import (
        check_output_dir,
        export_object,
        load_merge_config,
        make_spec,
        merge_branches,
    )

    settings = {
        k: v
        for k, v in (
            ("scale", scale),
            ("density", density),
            ("drop_rate", drop_rate),
            ("seed", seed),
        )
        if v is not None
    }
    try:
        if out is not None:  # before anything is merged or recorded
            check_output_dir(out, force)
        if config is not None:
            if branches or method or settings:
                raise typer.BadParameter("give --config FILE or branches with --method, not both")
            if _merge_folders(config, out):  # a mergekit config over model folders: done
                return
            refs, spec, file_head = load_merge_config(config)
            head = head or file_head
        else:
            if not branches or not method:
                raise typer.BadParameter("give branch ids and --method (or --config FILE)")
            refs, spec = list(branches), make_spec(method, **settings)
        with Store(store_dir(store)) as opened:
            outcome = merge_branches(opened, refs, spec, model=model)
            row = opened.get(outcome.id)
            totals = outcome.report["totals"]
            inputs = ", ".join(f"{k} {v[:8]}" for k, v in row.meta["inputs"].items())
            typer.echo(
                f"merge {row.short} ({row.meta['label']}) of {inputs} onto "
                f"{opened.get(row.meta['start']).kind} {row.meta['start'][:8]}: "
                f"{int(totals['overlap']):,} of {int(totals['numel']):,} elements changed "
                f"by 2+ branches, {int(totals['changed']):,} changed from the start"
            )
            typer.echo(
                "recorded in " + str(opened.root)
                if outcome.new
                else "identical to a merge already in the store (same inputs, same result)"
            )
            if out is not None:
                export_object(opened, outcome.id, out, head=head, model=model, force=force)
                typer.echo(f"wrote {out}; {_loader_hint(out)}")
    except MedusaError as exc:
        raise fail(exc) from exc


def _merge_folders(config: Path, out: Path | None) -> bool:
    """Run ``config`` if it is a mergekit config over model folders (True), else leave it to the
    branch history (False)."""
    import yaml

    from medusa_fed.errors import ConfigError
    from medusa_fed.merging.mergekit import is_mergekit, merge_folders, translate

    try:
        raw = yaml.safe_load(config.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{config}: expected a readable YAML merge config ({exc})") from exc
    if not isinstance(raw, dict) or not is_mergekit(raw):
        return False
    if out is None:
        raise ConfigError(f"{config}: a merge of model folders needs -o OUT_FOLDER")
    job = translate(raw, str(config))
    merge_folders(job, out)
    typer.echo(f"merged {len(job.models)} models with {job.spec.method} into {out}")
    return True


@app.command()
def export(
    object_id: Annotated[str, Argument(help="Branch or merge id prefix.")],
    out: Annotated[Path, Option("--out", "-o", help="Output model directory.")],
    head: Annotated[str | None, Option(help="Merge: the team whose head goes in.")] = None,
    merged_adapter: Annotated[
        bool, Option(help="LoRA / IA3: fold the adapter into the weights (a plain model).")
    ] = False,
    store: StoreOption = None,
    model: ModelOption = None,
    force: Annotated[bool, Option("--force", help="Overwrite -o if it holds files.")] = False,
) -> None:
    """Write a branch or merge as a Hugging Face model directory (or PEFT adapter dir)."""
    from medusa_fed.errors import MedusaError
    from medusa_fed.history.branches import Store
    from medusa_fed.history.remerge import export_object

    try:
        with Store(store_dir(store), readonly=True) as opened:
            row = opened.resolve(object_id, ("branch", "merge", "base"))
            export_object(
                opened,
                row.id,
                out,
                head=head,
                model=model,
                merged_adapter=merged_adapter,
                force=force,
            )
        typer.echo(f"exported {row.kind} {row.short} ({row.name}) to {out}; {_loader_hint(out)}")
    except MedusaError as exc:
        raise fail(exc) from exc


@app.command()
def join(
    merge_id: Annotated[str, Argument(help="The merge the new team joins after.")],
    team: Annotated[str, Option(help="The new team's name.")],
    task: Annotated[str, Option(help="Its data: bundled task or a CSV/TSV/JSONL/Parquet file.")],
    policy: Annotated[
        str, Option(help="free (unowned elements) | take (also --take of every other team's)")
    ] = "free",
    take: Annotated[float, Option(help="policy take: fraction handed over.")] = 0.0,
    epochs: Annotated[float, Option(help="Fine-tuning epochs.")] = 2.0,
    max_steps: Annotated[int, Option(help="> 0: exactly this many steps.")] = 0,
    lr: Annotated[float | None, Option(help="Learning rate (default by method).")] = None,
    batch_size: Annotated[int, Option(help="Examples per step.")] = 16,
    max_length: Annotated[int, Option(help="Tokens per example.")] = 128,
    max_train: Annotated[int | None, Option(help="Cap on training examples.")] = None,
    max_test: Annotated[int | None, Option(help="Cap on test examples.")] = 500,
    seed: Annotated[int, Option(help="Seed of split, training and the take draw.")] = 0,
    store: StoreOption = None,
    model: ModelOption = None,
) -> None:
    """A new team trains the elements earlier teams left free and merges onto the result."""
    from medusa_fed.errors import MedusaError
    from medusa_fed.history.branches import Store
    from medusa_fed.history.join import JoinPolicy, join_after_merge
    from medusa_fed.history.values import base_model
    from medusa_fed.training.config import TrainConfig
    from medusa_fed.training.data import TaskKind, TaskSpec, load_task

    if policy not in ("free", "take"):
        raise typer.BadParameter(f"--policy: expected free or take, found {policy!r}")
    try:
        with Store(store_dir(store)) as opened:
            row = opened.resolve(merge_id, "merge")
            base = base_model(opened, row, model)
            kind: TaskKind = "classification" if base.is_classifier else "language-modeling"
            data = load_task(
                TaskSpec(source=task, kind=kind, max_train=max_train, max_test=max_test, seed=seed)
            )
            cfg = TrainConfig(
                epochs=epochs,
                max_steps=max_steps,
                lr=lr,
                batch_size=batch_size,
                max_length=max_length,
                seed=seed,
            )
            r = join_after_merge(
                opened, row.id, team, data, cfg, cast(JoinPolicy, policy), take, model=model
            )
        score = "  ".join(f"{k}={v:.4f}" for k, v in r.metrics.items() if k != "examples")
        typer.echo(
            f"team {team} owns {100 * r.owned_share:.1f}% of the elements (ownership "
            f"{r.ownership[:8]}); branch {r.branch[:8]}; merge {r.merge[:8]} onto "
            f"{row.short}" + (f"; {score}" if score else "")
        )
    except MedusaError as exc:
        raise fail(exc) from exc
