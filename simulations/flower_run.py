"""Run the Flower app on a local simulation SuperLink with ``flwr run``, as a Flower user would.

Since Flower 1.27 a simulation runs on a SuperLink too (``flower-superlink --simulation``), and
``flwr run <app> <connection>`` sends the app to it; the connections live in Flower's own
configuration, ``$FLWR_HOME/config.toml``. :func:`run_app` does exactly that, with nothing
outside the directory it is given:

- ``<root>/home/config.toml``  a private FLWR_HOME with one connection, ``medusa-sim``;
- a SuperLink on 127.0.0.1 at a free port, started under ``timeout`` (the run's bound), in its
  own process group, stopped by its pid when the run ends (it stops its SuperExec, and that the
  simulation process);
- ``flwr run deploy/app medusa-sim --run-config <root>/run-config.toml --federation-config
  "num-supernodes=N ..." --stream``, whose output (the ServerApp's and every ClientApp's log)
  goes to ``log_file`` with the SuperLink's own;
- ``<root>/progress.jsonl``: the progress events of every process of the run
  (``MEDUSA_PROGRESS``), handed to ``on_event`` while the run goes on.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import httpx

import medusa_fed
from medusa_fed import progress
from medusa_fed.errors import ConfigError

APP_DIR = Path(__file__).resolve().parents[1] / "deploy" / "app"
CONNECTION = "medusa-sim"
START_S = 60.0  # the SuperLink must answer /health within this
POLL_S = 0.2


def flower_bin(name: str) -> str:
    """A Flower executable of this environment (next to this Python), else from PATH."""
    here = Path(sys.executable).parent / name
    if here.is_file():
        return str(here)
    found = shutil.which(name)
    if found is None:
        raise ConfigError(f"{name} not found next to {sys.executable} or on PATH; install flwr")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))  # a TOML basic string (JSON escapes are TOML escapes)


def write_toml(path: Path, values: Mapping[str, Any]) -> Path:
    path.write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in values.items()))
    return path


def write_flower_config(home: Path, port: int) -> Path:
    """``$FLWR_HOME/config.toml`` with one connection: the local simulation SuperLink."""
    home.mkdir(parents=True, exist_ok=True)
    path = home / "config.toml"
    path.write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
        f'address = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    return path


def federation_config(num_supernodes: int, cpus_per_team: int) -> str:
    """``--federation-config``: one virtual SuperNode per team, ``cpus_per_team`` CPUs each."""
    values = {
        "num-supernodes": num_supernodes,
        "client-resources-num-cpus": max(1, cpus_per_team),
        "init-args-num-cpus": max(1, os.cpu_count() or 1),
        "init-args-logging-level": "warning",
        "init-args-log-to-driver": True,
    }
    return " ".join(f"{k}={toml_value(v)}" for k, v in values.items())


def child_env(home: Path, progress_file: Path) -> dict[str, str]:
    """The environment of the Flower processes: the private FLWR_HOME, no network calls, no
    dependency installation, progress to ``progress_file``, and this medusa-fed first on the
    path (the app carries no code: its components are imported from here)."""
    source = str(Path(medusa_fed.__file__).resolve().parents[1])
    paths = [source, *(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p)]
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": os.pathsep.join(dict.fromkeys(paths)),
        "FLWR_HOME": str(home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
        "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
        "TOKENIZERS_PARALLELISM": "false",
        "RAY_DEDUP_LOGS": "0",
        "TQDM_DISABLE": "1",
        progress.ENV: str(progress_file),
    }


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop ``proc`` and its process group: TERM, then KILL."""
    for sig, wait_s in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=wait_s)
            return


@contextlib.contextmanager
def local_superlink(
    root: Path, env: dict[str, str], log: IO[bytes], deadline_s: float
) -> Iterator[int]:
    """A simulation SuperLink on 127.0.0.1 at a free port (yielded), killed after
    ``deadline_s`` at the latest and stopped by its pid when the block ends."""
    port = free_port()
    argv = [
        "timeout", "-s", "TERM", "-k", "15", str(int(deadline_s)),
        flower_bin("flower-superlink"), "--insecure", "--simulation",
        "--host", "127.0.0.1", "--port", str(port),
        "--disable-runtime-dependency-installation",
    ]  # fmt: skip
    proc = subprocess.Popen(
        argv, stdout=log, stderr=subprocess.STDOUT, cwd=root, env=env, start_new_session=True
    )
    try:
        started = time.monotonic()
        while True:
            if proc.poll() is not None:
                raise ConfigError(
                    f"the local Flower SuperLink exited with code {proc.returncode} at start; "
                    f"see {log.name}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1.0).is_success:
                    break
            if time.monotonic() - started > START_S:
                raise ConfigError(
                    f"the local Flower SuperLink did not answer within {START_S:.0f} s; "
                    f"see {log.name}"
                )
            time.sleep(POLL_S)
        yield port
    finally:
        _stop(proc)


def _tee(proc: subprocess.Popen[bytes], log: IO[bytes]) -> None:
    """Copy ``proc``'s output to ``log`` and to stderr, line by line."""
    assert proc.stdout is not None
    for line in proc.stdout:
        log.write(line)
        log.flush()
        sys.stderr.buffer.write(line)
        sys.stderr.flush()


def run_app(
    run_config: Mapping[str, Any],
    num_supernodes: int,
    root: Path,
    log_file: Path,
    cpus_per_team: int = 1,
    on_event: progress.Reporter | None = None,
    deadline_s: float = 3600.0,
    app: Path = APP_DIR,
    echo: bool = False,
) -> None:
    """``flwr run`` the app with ``run_config`` on a local simulation SuperLink of
    ``num_supernodes`` virtual SuperNodes; returns when the run has ended. ``echo``: the run's
    log (ServerApp and ClientApps) also goes to stderr."""
    root.mkdir(parents=True, exist_ok=True)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    home = root / "home"
    events = root / "progress.jsonl"
    events.unlink(missing_ok=True)
    env = child_env(home, events)
    overrides = write_toml(root / "run-config.toml", run_config)
    offset = 0

    def drain() -> None:
        nonlocal offset
        new, offset = progress.read_new(str(events), offset)
        if on_event is not None:
            for event in new:
                on_event(event)

    with (
        open(log_file, "ab") as log,
        local_superlink(root, env, log, deadline_s) as port,
    ):
        write_flower_config(home, port)
        argv = [
            flower_bin("flwr"), "run", str(app), CONNECTION,
            "--run-config", str(overrides),
            "--federation-config", federation_config(num_supernodes, cpus_per_team),
            "--stream",
        ]  # fmt: skip
        log.write(f"$ {' '.join(argv)}\n".encode())
        log.flush()
        runner = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE if echo else log,
            stderr=subprocess.STDOUT,
            cwd=root,
            env=env,
            start_new_session=True,
        )
        if echo:
            threading.Thread(target=_tee, args=(runner, log), daemon=True).start()
        ends = time.monotonic() + deadline_s
        try:
            while runner.poll() is None:
                drain()
                if time.monotonic() > ends:
                    raise ConfigError(f"the Flower run did not end within {deadline_s:.0f} s")
                time.sleep(POLL_S)
        finally:
            if runner.poll() is None:
                _stop(runner)
            drain()
        if runner.returncode != 0:
            raise ConfigError(f"flwr run exited with code {runner.returncode}; see {log_file}")
