"""The ``medusa`` command: one Typer app; each sub-command lives in its own module here."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import typer

app = typer.Typer(
    name="medusa",
    help="Medusa on Flower: ownership-assigned, masked, conflict-free collaborative fine-tuning.",
    no_args_is_help=True,
    add_completion=False,
)


FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class Options:
    """What the ``medusa`` callback parsed, for the sub-commands."""

    verbose: bool = False


@app.callback()
def setup_logging(
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Debug logging; `simulate` shows every log line too."
    ),
) -> None:
    Options.verbose = verbose
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format=FORMAT, datefmt="%H:%M:%S"
    )


def own_warnings(record: logging.LogRecord) -> bool:
    """Warnings a user can act on (a team left out, a loss that diverged, a bad file): the
    project's own. Other libraries' warnings go to the run's log file only."""
    from medusa_fed.progress import OWN_LOGGERS

    return record.levelno >= logging.WARNING and record.name.split(".")[0] in OWN_LOGGERS


@contextlib.contextmanager
def log_to_file(path: Path) -> Iterator[None]:
    """While the block runs, every log record (every library; INFO, DEBUG with -v) goes to
    ``path``, and the terminal's log handler shows only the project's own warnings (everything
    with -v). Python warnings (deprecations, library hints) are logged, so they land in the file.
    The previous logging set-up is restored after."""
    root = logging.getLogger()
    file_handler = logging.FileHandler(path, encoding="utf-8")
    file_handler.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
    terminal = [h for h in root.handlers if type(h) is logging.StreamHandler]
    level = root.level
    if not Options.verbose:
        for handler in terminal:
            handler.addFilter(own_warnings)
    root.addHandler(file_handler)
    root.setLevel(min(level or logging.INFO, logging.DEBUG if Options.verbose else logging.INFO))
    logging.captureWarnings(True)
    try:
        yield
    finally:
        logging.captureWarnings(False)
        root.removeHandler(file_handler)
        file_handler.close()
        root.setLevel(level)
        for handler in terminal:
            handler.removeFilter(own_warnings)


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
