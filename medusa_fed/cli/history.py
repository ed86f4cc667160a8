"""``medusa import``, ``medusa log``, ``medusa show``, ``medusa diff``: fill and inspect the store.

Examples (after ``medusa simulate ... --out runs/x``, which imports the run itself)::

    medusa log                      # base -> run -> ownership, branches, merges (with metrics)
    medusa show 790e1e0d            # one object: ownership share per layer, conflicts, metrics
    medusa diff 790e1e0d f4294b4e   # which tensors differ, how many elements, by how much
    medusa import runs/old          # a run made with store = off, or interrupted

Every command reads ``--store`` (default ``$MEDUSA_STORE`` or ``runs/.medusa-store``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from typer import Argument, Option

from medusa_fed.cli.app import app

StoreOption = Annotated[
    Path | None,
    Option("--store", help="Store directory (default: $MEDUSA_STORE or runs/.medusa-store)."),
]
ModelOption = Annotated[
    str | None, Option(help="Base model to load if its recorded source moved (same fingerprint).")
]


def store_dir(store: Path | None) -> Path:
    """The ``--store`` value or the default store path."""
    from medusa_fed.history.branches import default_store_path

    return store if store is not None else default_store_path()


def fail(exc: Exception) -> typer.Exit:
    """Print a MedusaError for the shell user and return the exit to raise (status 2)."""
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(2)


@app.command("import")
def import_(
    run_dirs: Annotated[list[Path], Argument(help="Run directories (finished or partial).")],
    store: StoreOption = None,
) -> None:
    """Import run directories into the store (idempotent: a second import adds only news)."""
    from medusa_fed.errors import MedusaError
    from medusa_fed.history.branches import Store
    from medusa_fed.history.importer import import_run

    target = store_dir(store)
    try:
        with Store(target) as opened:
            for run_dir in run_dirs:
                r = import_run(run_dir, opened)
                typer.echo(
                    f"imported run {r.run[:8]} ({r.status}) from {run_dir} into {target}: base "
                    f"{r.base[:8]}, ownership {r.ownership[:8] if r.ownership else '-'}, "
                    f"{len(r.branches)} branches, {len(r.merges)} merges "
                    f"({', '.join(f'{k} {v[:8]}' for k, v in r.merges.items()) or 'none'})"
                )
    except MedusaError as exc:
        raise fail(exc) from exc


@app.command()
def log(store: StoreOption = None) -> None:
    """Show the history as a tree: base -> runs -> ownership, branches, merges, with metrics."""
    from medusa_fed.errors import MedusaError
    from medusa_fed.history.branches import Store
    from medusa_fed.history.log import render_log

    try:
        with Store(store_dir(store), readonly=True) as opened:
            typer.echo("\n".join(render_log(opened)))
    except MedusaError as exc:
        raise fail(exc) from exc


@app.command()
def show(
    object_id: Annotated[str, Argument(help="Object id or unique prefix (>= 4 hex digits).")],
    store: StoreOption = None,
) -> None:
    """Show one object: ownership share per layer, conflicts and metrics."""
    from medusa_fed.errors import MedusaError
    from medusa_fed.history.branches import Store
    from medusa_fed.history.describe import show_lines

    try:
        with Store(store_dir(store), readonly=True) as opened:
            typer.echo("\n".join(show_lines(opened, opened.resolve(object_id))))
    except MedusaError as exc:
        raise fail(exc) from exc


@app.command()
def diff(
    a: Annotated[str, Argument(help="First object (base, branch or merge id prefix).")],
    b: Annotated[str, Argument(help="Second object.")],
    store: StoreOption = None,
    all_tensors: Annotated[bool, Option("--all", help="List every differing tensor.")] = False,
    model: ModelOption = None,
) -> None:
    """Which tensors of two objects differ, in how many elements, and by how much."""
    from medusa_fed.errors import MedusaError
    from medusa_fed.history.branches import Store
    from medusa_fed.history.compare import diff_objects, render_diff

    try:
        with Store(store_dir(store), readonly=True) as opened:
            row_a = opened.resolve(a, ("base", "branch", "merge"))
            row_b = opened.resolve(b, ("base", "branch", "merge"))
            typer.echo(
                f"a: {row_a.kind} {row_a.short} ({row_a.name})   "
                f"b: {row_b.kind} {row_b.short} ({row_b.name})"
            )
            diffs, compared = diff_objects(opened, row_a, row_b, model)
            typer.echo("\n".join(render_diff(diffs, compared, show_all=all_tensors)))
    except MedusaError as exc:
        raise fail(exc) from exc
