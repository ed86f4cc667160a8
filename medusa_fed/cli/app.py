"""The ``medusa`` command: one Typer app; each sub-command lives in its own module here."""

from __future__ import annotations

import logging

import typer

app = typer.Typer(
    name="medusa",
    help="Medusa on Flower: ownership-assigned, masked, conflict-free collaborative fine-tuning.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
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
