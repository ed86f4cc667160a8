"""What ``medusa simulate`` shows while a run goes on, rendered from progress events.

One live display per stage (the stage, then a line per team: what it does, step / total, loss,
elapsed and remaining time), a line per finished stage with its time and bytes, nothing else.
With rich (installed with typer and Flower) on a terminal the display redraws in place; on a
terminal without rich it is one carriage-return line; when stdout is not a terminal (a pipe, a
CI log) only the finished-stage lines are printed.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from typing import IO, Any

from medusa_fed.progress import Event


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def clock(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = max(0, int(round(seconds)))
    return (
        f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
    )


def duration(seconds: float) -> str:
    """``4.2 s`` under a minute, else ``m:ss`` (``h:mm:ss``)."""
    return f"{seconds:.1f} s" if seconds < 60 else clock(seconds)


@dataclass
class TeamRow:
    """The latest step event of one team in the current stage."""

    what: str = ""
    step: int = 0
    total: int = 0
    loss: float | None = None
    first_t: float = 0.0  # when the current activity's first seen step ended
    first_step: int = 0
    last: float = 0.0

    def remaining(self) -> float | None:
        if self.total and self.step >= self.total:
            return 0.0
        n = self.step - self.first_step
        if n <= 0:
            return None
        return (self.last - self.first_t) / n * (self.total - self.step)


@dataclass
class StageView:
    name: str = ""
    started: float = 0.0
    teams: dict[str, TeamRow] = field(default_factory=dict)

    def step(self, event: Event) -> None:
        what = str(event.get("what", ""))
        task, _, team = what.rpartition(" ")
        task, team = (task, team) if task else (what, what)
        row = self.teams.setdefault(team, TeamRow())
        now = float(event.get("t", time.time()))
        step = int(event.get("step", 0))
        if task != row.what or step <= row.step:  # a new activity
            row.first_t, row.first_step = now, step
        row.what, row.step, row.total, row.last = task, step, int(event.get("total", 0)), now
        loss = event.get("loss")
        row.loss = float(loss) if loss is not None else None

    def remaining(self) -> float | None:
        left = [r.remaining() for r in self.teams.values()]
        known = [x for x in left if x is not None]
        return max(known) if known else None


class ProgressView:
    """Receives progress events (any thread) and renders them on ``stream``."""

    def __init__(self, stream: IO[str] | None = None, live: bool | None = None) -> None:
        self.stream = stream or sys.stdout
        tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.live_mode = tty if live is None else live
        self.stage = StageView()
        self.done: list[str] = []
        self.run_started = time.time()
        self._lock = threading.RLock()  # Live.stop() renders once more from this thread
        self._live: Any = None
        self._last_plain = 0.0
        self.between = False  # a stage has finished, the next has not started

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> ProgressView:
        if self.live_mode:
            try:
                from rich.console import Console
                from rich.live import Live

                console = Console(file=self.stream)
                self._live = Live(
                    get_renderable=self._renderable,
                    console=console,
                    refresh_per_second=4,
                    transient=True,
                )
                self._live.start()
            except ImportError:
                self._live = None
        return self

    def __exit__(self, *exc: object) -> None:
        live, self._live = self._live, None
        if live is not None:
            live.stop()
        elif self.live_mode:
            self._write("\r\033[K")

    # ------------------------------------------------------------------ events
    def __call__(self, event: Event) -> None:
        with self._lock:
            kind = event.get("kind")
            if kind == "stage" and event.get("state") == "start":
                self.stage = StageView(
                    name=str(event.get("stage", "")), started=float(event.get("t", time.time()))
                )
                self.between = False
                for team in event.get("teams") or []:
                    self.stage.teams.setdefault(str(team), TeamRow())
            elif kind == "stage" and event.get("state") == "done":
                self._finished(event)
            elif kind == "warning":
                self._line(f"warning: {event.get('message', '')}")
            elif kind == "step":
                self.stage.step(event)
                if self._live is None and self.live_mode:
                    self._plain_status()

    def _finished(self, event: Event) -> None:
        name = str(event.get("stage", ""))
        moved = ""
        sent, received = int(event.get("sent", 0)), int(event.get("received", 0))
        if sent or received:
            moved = f"  sent {human_bytes(sent)}, received {human_bytes(received)}"
        line = f"{name:<10} done in {duration(float(event.get('seconds', 0.0))):>7}{moved}"
        self.done.append(line)
        self._line(line)
        self.stage = StageView(name="", started=float(event.get("t", time.time())))
        self.between = True

    def _line(self, line: str) -> None:
        """A line that stays (above the live display, if any)."""
        if self._live is not None:
            self._live.console.print(line, highlight=False, markup=False)
        else:
            self._write(("\r\033[K" if self.live_mode else "") + line + "\n")

    # ------------------------------------------------------------------ rendering
    def _rows(self) -> list[tuple[str, ...]]:
        rows: list[tuple[str, ...]] = []
        now = time.time()
        for team, row in sorted(self.stage.teams.items()):
            rows.append(
                (
                    team,
                    row.what or "waiting",
                    f"{row.step}/{row.total}" if row.total else "-",
                    f"{row.loss:.4f}" if row.loss is not None else "-",
                    clock(now - row.first_t) if row.what else "-",
                    clock(row.remaining()) if row.what else "-",
                )
            )
        return rows

    def _renderable(self) -> Any:
        from rich.table import Table
        from rich.text import Text

        with self._lock:
            now = time.time()
            if self.stage.name:
                title = f"{self.stage.name}  elapsed {clock(now - self.stage.started)}"
            elif self.between:
                title = f"writing the report  elapsed {clock(now - self.stage.started)}"
            else:
                title = f"starting the teams  elapsed {clock(now - self.run_started)}"
            left = self.stage.remaining()
            if left is not None:
                title += f"  ~{clock(left)} left"
            rows = self._rows()
            if not rows:
                return Text(title)
            table = Table(title=title, title_justify="left", box=None, pad_edge=False)
            for col in ("team", "doing", "step", "loss", "elapsed", "left"):
                table.add_column(col, justify="left" if col in ("team", "doing") else "right")
            for row in rows:
                table.add_row(*row)
            return table

    def _plain_status(self) -> None:
        now = time.time()
        if now - self._last_plain < 0.25:
            return
        self._last_plain = now
        parts = [f"{r[0]} {r[1]} {r[2]}" for r in self._rows() if r[1] != "waiting"]
        text = f"{self.stage.name}: " + "; ".join(parts)
        self._write("\r\033[K" + text[:200])

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()
