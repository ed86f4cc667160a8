"""Progress events: what a run is doing now, for a display to render (no Flower, no terminal).

The pipeline and the training loop call :func:`emit` with small JSON-able events; whoever drives
the run decides where they go by installing a reporter (:func:`use`). A process with no reporter
installed appends its events, one JSON object a line, to the file named by the environment
variable ``MEDUSA_PROGRESS`` (how the processes of a Flower simulation, the ServerApp and every
ClientApp, report to the ``medusa simulate`` that started them), or drops them.

Events (``kind`` and its fields)::

    stage      stage, state ("start" | "done"), seconds, sent, received (bytes, "done" only)
    step       what ("probe movie", "train-round1 tweet", "eval medusa bbc"), step, total, loss
    run        state ("done" | "failed"), error (failed only)
    warning    logger, message: a warning of the project's own loggers someone can act on (a
               team left out, a loss that diverged), relayed by :func:`relay_warnings`

Every event also carries ``t`` (time.time() when emitted) and ``pid``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

Event = dict[str, Any]
Reporter = Callable[[Event], None]

ENV = "MEDUSA_PROGRESS"

_reporter: Reporter | None = None
_lock = threading.Lock()


class FileReporter:
    """Appends each event as one JSON line to ``path`` (several processes may share the file:
    each line is written with one ``write`` on a file opened for appending)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __call__(self, event: Event) -> None:
        line = (json.dumps(event, separators=(",", ":")) + "\n").encode()
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError:
            return  # progress is best effort: never stop a run for it
        try:
            os.write(fd, line)
        finally:
            os.close(fd)


def use(reporter: Reporter | None) -> Reporter | None:
    """Install ``reporter`` for this process (None: back to ``$MEDUSA_PROGRESS`` or nothing);
    returns the previous one."""
    global _reporter
    with _lock:
        previous, _reporter = _reporter, reporter
    return previous


def current() -> Reporter | None:
    """The reporter events go to now: the installed one, else ``$MEDUSA_PROGRESS``'s file."""
    if _reporter is not None:
        return _reporter
    path = os.environ.get(ENV)
    return FileReporter(path) if path else None


def emit(kind: str, **fields: Any) -> None:
    """Send one event to the current reporter (if any). Never raises."""
    reporter = current()
    if reporter is None:
        return
    with contextlib.suppress(Exception):  # a broken display must not stop training
        reporter({"kind": kind, "t": time.time(), "pid": os.getpid(), **fields})


def read_new(path: str, offset: int) -> tuple[list[Event], int]:
    """The complete event lines of ``path`` after byte ``offset``, and the offset after them
    (a line still being written is left for the next call)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            chunk = f.read()
    except FileNotFoundError:
        return [], offset
    end = chunk.rfind(b"\n")
    if end < 0:
        return [], offset
    events: list[Event] = []
    for line in chunk[: end + 1].splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events, offset + end + 1


OWN_LOGGERS = ("medusa_fed", "strategies", "clients", "simulations")


class _WarningRelay(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        if record.name.split(".")[0] in OWN_LOGGERS:
            emit("warning", logger=record.name, message=record.getMessage())


_RELAY = _WarningRelay(logging.WARNING)


def relay_warnings() -> None:
    """In a process that reports progress to a file (a Flower simulation's ServerApp or
    ClientApp), also send the project's own warnings as events, so the display that started the
    run shows them. Idempotent; nothing when no file is set."""
    if os.environ.get(ENV) and _RELAY not in logging.getLogger().handlers:
        logging.getLogger().addHandler(_RELAY)
