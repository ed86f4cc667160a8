"""Choose an LLM training budget on validation: each team alone, before and after, per budget.

Run: ``python -m simulations.llm_budget --tasks movie,tweet,bbc,spam --lrs 1e-3,3e-3
--epochs 2,3 --max-train 64 --max-validation 32``

For each task the untuned model is scored once on the task's *validation* split (rank
classification over the label words, and exact match of greedy generation); then an unmasked
branch is trained on the training split at each (lr, epochs) and scored on the same validation
examples. Nothing here reads a test split: the benchmark's budget is chosen from this table
(the issue's bar: every team alone at least 10 points above the untuned model). Prints one
Markdown table and writes it, with the raw numbers, to ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path
from typing import Any

from medusa_fed.training.branch import finetune, prompter_of
from medusa_fed.training.config import ModelSpec, TrainConfig
from medusa_fed.training.data import TaskSpec, load_task
from medusa_fed.training.evaluate import evaluate
from medusa_fed.training.models import load_base
from medusa_fed.training.quiet import quiet_transformers


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def _score(
    task: str,
    base: Any,
    data: Any,
    prompter: Any,
    args: argparse.Namespace,
    shared: Any,
    head: Any,
) -> dict[str, float]:
    """Validation scores of the base (``shared=None``) or of ``shared`` with ``head``."""
    return evaluate(
        base,
        shared,
        head,
        data.validation,
        num_labels=len(data.labels),
        batch_size=args.batch_size,
        max_length=args.max_length,
        prompter=prompter,
        desc=f"validate {task}",
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct", help="packaged LLM or HF dir")
    ap.add_argument("--method", default="lora", choices=("lora", "ia3", "full"))
    ap.add_argument("--tasks", default="movie,tweet,bbc,spam")
    ap.add_argument("--lrs", default="1e-3,3e-3")
    ap.add_argument("--epochs", default="3")
    ap.add_argument("--max-train", type=int, default=64)
    ap.add_argument("--max-validation", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--balance-classes",
        action="store_true",
        help="capped subsets take every class equally (run-config class-balance, as the bench)",
    )
    ap.add_argument("--out", type=Path, default=Path("runs/llm-budget.json"))
    args = ap.parse_args(argv)

    quiet_transformers()
    base = load_base(ModelSpec(source=args.model, family="causal-lm", method=args.method))
    budgets = list(itertools.product(_floats(args.lrs), _floats(args.epochs)))
    rows: list[dict[str, object]] = []
    for task in [t for t in args.tasks.split(",") if t]:
        data = load_task(
            TaskSpec(
                source=task,
                max_train=args.max_train,
                max_validation=args.max_validation,
                max_test=1,  # never scored here
                balance_classes=args.balance_classes,
                seed=args.seed,
            )
        )
        prompter = prompter_of(base, data)

        started = time.monotonic()
        before = _score(task, base, data, prompter, args, None, None)
        after: dict[str, dict[str, float]] = {}
        row: dict[str, object] = {"task": task, "before": before, "after": after}
        for lr, epochs in budgets:
            cfg = TrainConfig(
                epochs=epochs,
                lr=lr,
                batch_size=args.batch_size,
                max_length=args.max_length,
                seed=args.seed,
            )
            branch = finetune(base, data, cfg, desc=f"{task} lr {lr:g} x {epochs:g}")
            shared = base.shared_state()
            for n, d in branch.delta.items():
                shared[n] += d
            name = f"lr {lr:g}, {epochs:g} ep"
            after[name] = _score(task, base, data, prompter, args, shared, branch.head)
        row["seconds"] = round(time.monotonic() - started, 1)
        rows.append(row)
        print(f"{task}: done in {row['seconds']} s", flush=True)

    names = [f"lr {lr:g}, {e:g} ep" for lr, e in budgets]
    lines = [
        "| task | before | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    for row in rows:
        cell = [f"{100 * row['before']['accuracy']:.1f}"]  # type: ignore[index]
        for n in names:
            acc = 100 * row["after"][n]["accuracy"]  # type: ignore[index]
            cell.append(f"{acc:.1f} ({acc - float(cell[0]):+.1f})")
        lines.append(f"| {row['task']} | " + " | ".join(cell) + " |")
    table = "\n".join(lines)
    print(
        f"validation accuracy (rank classification), {args.method}, {args.max_train} train, "
        f"{args.max_validation} validation, max-length {args.max_length}, seed {args.seed}"
        f"{', classes balanced' if args.balance_classes else ''}:"
    )
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": vars(args) | {"out": str(args.out)}, "rows": rows}))


if __name__ == "__main__":
    main()
