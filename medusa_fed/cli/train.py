"""``medusa train``: probe or (masked) fine-tune one team from the shell, then evaluate.

Example (about a minute on 2 CPU cores)::

    medusa train --task movie --method lora --max-train 500 --out runs/movie-lora

prints the test accuracy before (the untuned base with a fresh head) and after, and writes
``delta.safetensors`` (or ``probe.safetensors`` with ``--probe``), ``head.safetensors`` and
``metrics.json`` to ``--out``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from typer import Option

from medusa_fed.cli.app import app


@app.command()
def train(
    task: Annotated[str, Option(help="Bundled task (movie, tweet, spam, bbc) or a data file.")],
    out: Annotated[Path, Option(help="Output directory.")],
    model: Annotated[str, Option(help="Bundled model or local HF directory.")] = "all-MiniLM-L6-v2",
    family: Annotated[str, Option(help="encoder-classifier | causal-lm")] = "encoder-classifier",
    method: Annotated[str, Option(help="full | lora | ia3")] = "full",
    raw_text: Annotated[
        bool, Option("--raw-text", help="Causal LM: next-token loss on the texts, labels unused.")
    ] = False,
    probe: Annotated[bool, Option("--probe", help="Run the probe (top-d sparse delta).")] = False,
    density: Annotated[float, Option(help="Probe: fraction of each tensor kept.")] = 0.2,
    mask: Annotated[Path | None, Option(help="Mask file (safetensors, bool per tensor).")] = None,
    ownership: Annotated[Path | None, Option(help="Ownership map file (with --team).")] = None,
    team: Annotated[str | None, Option(help="Team name in the ownership map.")] = None,
    epochs: Annotated[float, Option(help="Epochs over the training split.")] = 1.0,
    max_steps: Annotated[int, Option(help="> 0: exactly this many steps (overrides epochs).")] = 0,
    lr: Annotated[
        float | None, Option(help="Learning rate (default 5e-5 full, 1e-3 adapters).")
    ] = None,
    batch_size: Annotated[int, Option(help="Examples per step.")] = 16,
    max_train: Annotated[int | None, Option(help="Cap on training examples.")] = None,
    max_test: Annotated[int | None, Option(help="Cap on test examples.")] = 500,
    seed: Annotated[int, Option(help="Seed of split, shuffling, dropout and head init.")] = 0,
    save_model: Annotated[
        bool, Option(help="Also write a from_pretrained-loadable model.")
    ] = False,
) -> None:
    """Probe or fine-tune one team's branch and report test metrics before and after."""
    from medusa_fed.deltas import StateDict
    from medusa_fed.masking import load_mask, mask_from_ownership
    from medusa_fed.training import export
    from medusa_fed.training.branch import finetune, num_labels_of, prompter_of
    from medusa_fed.training.branch import probe as run_probe
    from medusa_fed.training.config import ModelSpec, TrainConfig
    from medusa_fed.training.data import TaskKind, TaskSpec, load_task
    from medusa_fed.training.evaluate import evaluate
    from medusa_fed.training.models import load_base

    if (ownership is None) != (team is None) or (mask is not None and ownership is not None):
        raise typer.BadParameter("give --mask FILE, or --ownership FILE with --team NAME")
    kind: TaskKind = "language-modeling" if raw_text else "classification"
    data = load_task(
        TaskSpec(source=task, kind=kind, max_train=max_train, max_test=max_test, seed=seed)
    )
    spec = ModelSpec(source=model, family=family, method=method)  # type: ignore[arg-type]
    cfg = TrainConfig(epochs=epochs, max_steps=max_steps, lr=lr, batch_size=batch_size, seed=seed)
    base = load_base(spec)
    typer.echo(
        f"base {spec.source} ({spec.method}): {len(base.shared_names)} shared tensors, "
        f"fingerprint {base.fingerprint()[:16]}; task {data.name}: "
        f"{len(data.train)} train / {len(data.test)} test"
    )
    labels = num_labels_of(base, data)
    prompter = prompter_of(base, data)
    before = evaluate(
        base, None, None, data.test, labels, head_seed=seed, desc="before", prompter=prompter
    )
    masks = load_mask(mask) if mask else None
    if ownership is not None and team is not None:
        masks = mask_from_ownership(ownership, team)
    out.mkdir(parents=True, exist_ok=True)
    start = base.shared_state()
    if probe:
        result = run_probe(base, data, cfg, density=density)
        export.save_sparse(out / "probe.safetensors", result.sparse)
        tuned: StateDict = {n: start[n] + s.to_dense() for n, s in result.sparse.items()}
        head, train_metrics = result.head, result.metrics
    else:
        branch = finetune(base, data, cfg, mask=masks)
        export.save_state(
            out / "delta.safetensors",
            branch.delta,
            {"fingerprint": base.fingerprint(), "masked": str(masks is not None)},
        )
        tuned = {n: start[n] + branch.delta[n] for n in start}
        head, train_metrics = branch.head, branch.metrics
    export.save_state(out / "head.safetensors", head)
    after = evaluate(base, tuned, head or None, data.test, labels, desc="after", prompter=prompter)
    if save_model:
        export.save_model_dir(base, out / "model", tuned, head or None, labels=data.labels or None)
    report = {
        "task": data.name,
        "model": spec.source,
        "method": spec.method,
        "probe": probe,
        "masked": masks is not None,
        "before": before,
        "after": after,
        "train": train_metrics,
        "fingerprint": base.fingerprint(),
    }
    (out / "metrics.json").write_text(json.dumps(report, indent=2))
    key = "accuracy" if "accuracy" in after else "perplexity"
    typer.echo(
        f"{key}: before {before[key]:.4f} -> after {after[key]:.4f} "
        f"({'probe top-d' if probe else 'fine-tuned'}; outputs in {out})"
    )
