"""The ``medusa`` command: one Typer app; each sub-command lives in its own module here."""

from __future__ import annotations

import logging
import sys

import typer

app = typer.Typer(
    name="medusa",
    help="Medusa on Flower: ownership-assigned, masked, conflict-free collaborative fine-tuning.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def setup_logging(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


@app.command()
def version() -> None:
    """Print the medusa-fed version."""
    from medusa_fed import __version__

    typer.echo(__version__)


def main() -> None:
    """The ``medusa`` console script: a user error (a MedusaError, a file that cannot be read or
    written) ends in one line naming what was expected and found, never a traceback."""
    from medusa_fed.errors import MedusaError

    try:
        app()
    except MedusaError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except OSError as exc:  # a missing, read-only or wrong-kind path the user gave
        where = f": {exc.filename}" if exc.filename else ""
        typer.echo(f"error: {exc.strerror or exc}{where}", err=True)
        sys.exit(2)
