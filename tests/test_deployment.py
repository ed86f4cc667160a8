"""Real deployment on loopback: a SuperLink with TLS and SuperNode authentication, one SuperNode
per team, runs launched with ``flwr run`` (docs/deployment.md, the same commands).

Every process is started here with a deadline, logs to a file under the test's directory, and is
stopped by its pid (and its process group) at teardown. Ports are free ones picked at start.

- fast: certificates and keys, the app's run config, a SuperNode with an unregistered key and one
  without the CA certificate are refused (the registered teams stay online), and payloads larger
  than Flower's 5 MiB chunk make the round trip through the SuperLink bit for bit.
- slow: the full Medusa protocol on the tiny BERT over the deployment gives the same merged model,
  bit for bit, as ``simulate(..., backend="inprocess")`` with the same config and teams.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx
import pytest
import torch
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key
from typer.testing import CliRunner

from medusa_fed.cli import app as cli
from medusa_fed.deploy.certs import (
    certificate_names,
    write_superlink_certs,
    write_team_keys,
)
from medusa_fed.errors import ConfigError
from medusa_fed.run_config import RunConfig
from medusa_fed.rundir.run_dir import RunDir
from medusa_fed.team_config import SIMULATION_KEYS
from simulations.simulate import parse_teams, simulate
from strategies.server_app import coordinator_config

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "deploy" / "app"
PAYLOAD_APP = Path(__file__).resolve().parent / "payload_app"
BIN = Path(sys.executable).parent  # flower-superlink, flower-supernode, flwr of this environment
TEAMS = ("alpha", "beta", "gamma")  # gamma refuses masks (an uncontrolled branch)
START_S = 90  # a process must be up within this
RUN_S = 900  # a Medusa run on the tiny BERT must finish within this (3 SuperNodes on 2 cores)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def toml_assignments(values: Mapping[str, object]) -> str:
    """``key='text' n=3 flag=true``: the form of --run-config and --node-config."""

    def one(v: object) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        return "'" + str(v).replace("'", "") + "'"

    return " ".join(f"{k}={one(v)}" for k, v in values.items())


class Federation:
    """One SuperLink and its SuperNodes on loopback, each a child process with its own FLWR_HOME."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"  # every API: the coordinator's operator only
        self.fleet_address = f"127.0.0.1:{free_port()}"  # the Fleet API only: what sites get
        self.certs = write_superlink_certs(root / "certs")
        self.keys = root / "keys"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.team_nodes: dict[str, str] = {}  # node id -> status once the teams are online
        self.env = {
            **os.environ,
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            # `python -m strategies.superlink` from the test's directory imports this checkout
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p
            ),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",  # the app is installed already
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_TELEMETRY_ENABLED": "0",  # no internet here
        }
        cli_home = root / "home" / "cli"
        cli_home.mkdir(parents=True)
        (cli_home / "config.toml").write_text(
            '[superlink]\ndefault = "medusa"\n\n[superlink.medusa]\n'
            f'address = "{self.address}"\nroot-certificates = "{self.certs.ca_cert}"\n'
        )
        site_home = root / "home" / "site-cli"  # a site's flwr: its address and ca.crt only
        site_home.mkdir(parents=True)
        (site_home / "config.toml").write_text(
            '[superlink]\ndefault = "medusa"\n\n[superlink.medusa]\n'
            f'address = "{self.fleet_address}"\nroot-certificates = "{self.certs.ca_cert}"\n'
        )

    # ------------------------------------------------------------------ processes
    def start(self, name: str, argv: list[str], deadline_s: float) -> subprocess.Popen[bytes]:
        """Start ``argv`` (killed by ``timeout`` after ``deadline_s``) in its own process group."""
        home = self.root / "home" / name
        home.mkdir(parents=True, exist_ok=True)
        log = open(self.root / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            ["timeout", "-s", "TERM", "-k", "10", str(int(deadline_s)), *argv],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.root,
            start_new_session=True,
            env={**self.env, "FLWR_HOME": str(home)},
        )
        log.close()
        self.procs[name] = proc
        return proc

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        for sig, wait_s in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)  # the group: timeout, the Flower process, its SuperExec
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=wait_s)
                break
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # anything of the group still alive

    def stop_all(self) -> None:
        for name in list(self.procs)[::-1]:
            self.stop(name)

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")

    def flwr(
        self, *args: str, timeout: float = 60, home: str = "cli"
    ) -> subprocess.CompletedProcess[str]:
        """``flwr`` as the coordinator's operator (home "cli") or as a site ("site-cli")."""
        return subprocess.run(
            [str(BIN / "flwr"), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.root,
            # wide: flwr's boxed messages must not wrap inside the words a test looks for
            env={**self.env, "FLWR_HOME": str(self.root / "home" / home), "COLUMNS": "250"},
        )

    # ------------------------------------------------------------------ SuperLink
    def start_superlink(self) -> None:
        self.start(
            "superlink",
            [
                sys.executable,
                "-m",
                "strategies.superlink",
                "--fleet-host",
                "127.0.0.1",
                "--fleet-port",
                self.fleet_address.rsplit(":", 1)[1],
                "--ssl-ca-certfile",
                str(self.certs.ca_cert),
                "--ssl-certfile",
                str(self.certs.server_cert),
                "--ssl-keyfile",
                str(self.certs.server_key),
                "--enable-supernode-auth",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            deadline_s=RUN_S + 600,
        )
        deadline = time.monotonic() + START_S
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if all(
                    httpx.get(
                        f"https://{a}/health", verify=str(self.certs.ca_cert), timeout=2
                    ).status_code
                    == 200
                    for a in (self.address, self.fleet_address)
                ):
                    return
            if self.procs["superlink"].poll() is not None:
                break
            time.sleep(0.5)
        raise AssertionError(f"SuperLink did not come up:\n{self.log('superlink')}")

    # ------------------------------------------------------------------ SuperNodes
    def register(self, team: str) -> Path:
        keys = write_team_keys(self.keys, team)
        out = self.flwr("supernode", "register", str(keys.public_key), "medusa")
        assert out.returncode == 0 and "registered successfully" in out.stdout, out
        return keys.private_key

    def start_supernode(
        self,
        name: str,
        node_config: Mapping[str, object],
        private_key: Path | None,
        root_certificates: Path | None,
        deadline_s: float = RUN_S + 300,
        retries: bool = True,
    ) -> None:
        argv = [
            str(BIN / "flower-supernode"),
            "--superlink",
            self.fleet_address,
            "--port",
            str(free_port()),
            "--node-config",
            toml_assignments(node_config),
        ]
        if root_certificates is not None:
            argv += ["--root-certificates", str(root_certificates)]
        if private_key is not None:
            argv += ["--auth-supernode-private-key", str(private_key)]
        if not retries:
            argv += ["--max-retries", "1", "--max-wait-time", "10"]
        self.start(name, argv, deadline_s)

    def nodes(self) -> dict[str, str]:
        """Node id -> status, as the SuperLink lists them."""
        out = self.flwr("supernode", "list", "medusa", "--format", "json")
        assert out.returncode == 0, out
        return {str(n["node-id"]): n["status"] for n in json.loads(out.stdout)["nodes"]}

    def wait_online(self, count: int) -> dict[str, str]:
        deadline = time.monotonic() + START_S
        while time.monotonic() < deadline:
            nodes = self.nodes()
            if sum(s == "online" for s in nodes.values()) >= count:
                return nodes
            time.sleep(1)
        logs = "\n".join(self.log(n) for n in self.procs if n != "superlink")
        raise AssertionError(f"expected {count} SuperNodes online, found {nodes}\n{logs}")

    # ------------------------------------------------------------------ runs
    def run(self, app: Path, config: Mapping[str, object]) -> int:
        out = self.flwr(
            "run", str(app), "medusa", "--run-config", toml_assignments(config), "--format", "json"
        )
        assert out.returncode == 0, out
        return int(json.loads(out.stdout)["run-id"])

    def wait_run(self, run_id: int, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        status = "?"
        while time.monotonic() < deadline:
            out = self.flwr("ls", "medusa", "--run-id", str(run_id), "--format", "json")
            if out.returncode == 0:
                status = json.loads(out.stdout)["runs"][0]["status"]
                if status.startswith("finished"):
                    return status
            time.sleep(3)
        raise AssertionError(f"run {run_id} still {status!r} after {timeout_s:.0f} s")

    def run_log(self, run_id: int) -> str:
        return self.flwr("log", str(run_id), "medusa", "--show").stdout


# ---------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def federation(
    tmp_path_factory: pytest.TempPathFactory, tiny_tasks: dict[str, Path]
) -> Iterator[Federation]:
    """A SuperLink (TLS, SuperNode auth) and one registered SuperNode per team, all online."""
    fed = Federation(tmp_path_factory.mktemp("deploy"))
    try:
        fed.start_superlink()
        for team in TEAMS:
            key = fed.register(team)
            node_config = parse_teams(
                ",".join(f"{t}={tiny_tasks[t]}" for t in TEAMS), uncontrolled=["gamma"]
            )[TEAMS.index(team)].to_node_config()
            fed.start_supernode(team, node_config, key, fed.certs.ca_cert)
        fed.team_nodes = fed.wait_online(len(TEAMS))
        yield fed
    finally:
        fed.stop_all()


def _refused(fed: Federation, name: str) -> str:
    proc = fed.procs[name]
    try:
        code = proc.wait(timeout=START_S)
    finally:
        fed.stop(name)
    assert code not in (0, 124), f"{name} exited {code}:\n{fed.log(name)}"
    return fed.log(name)


# ---------------------------------------------------------------------- certificates and keys
def test_superlink_certs_verify_and_keep_private_keys_private(tmp_path: Path):
    paths = write_superlink_certs(tmp_path / "c", hosts=["coord.example.org", "10.1.2.3"])
    ca = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(paths.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)  # raises if the CA did not sign it
    assert certificate_names(paths.server_cert) == [
        "localhost",
        "coord.example.org",
        "127.0.0.1",
        "10.1.2.3",
    ]
    for key in (paths.ca_key, paths.server_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(paths.ca_cert.stat().st_mode) == 0o644
    assert not list(tmp_path.glob("c/.tmp-*"))


def test_existing_outputs_are_refused_unless_forced(tmp_path: Path):
    first = write_superlink_certs(tmp_path)
    before = first.ca_cert.read_bytes()
    with pytest.raises(ConfigError, match=r"ca\.crt.*already exist.*--force"):
        write_superlink_certs(tmp_path)
    assert first.ca_cert.read_bytes() == before
    write_superlink_certs(tmp_path, force=True)
    assert first.ca_cert.read_bytes() != before
    write_team_keys(tmp_path, "alpha")
    with pytest.raises(ConfigError, match=r"alpha\.key.*already exist"):
        write_team_keys(tmp_path, "alpha")
    with pytest.raises(ConfigError, match="neither an IP address nor a DNS name"):
        write_superlink_certs(tmp_path / "x", hosts=["https://coord:9093"])
    with pytest.raises(ConfigError, match="team name"):
        write_team_keys(tmp_path, "../evil")


def test_team_keys_are_what_flower_loads(tmp_path: Path):
    keys = write_team_keys(tmp_path, "alpha")
    private = load_ssh_private_key(keys.private_key.read_bytes(), None)  # flower-supernode's call
    public = load_ssh_public_key(keys.public_key.read_bytes())  # flwr supernode register's call
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert public.curve.name == "secp384r1" and private.public_key() == public
    assert keys.public_key.read_text().startswith("ecdsa-sha2-nistp384 ")
    assert stat.S_IMODE(keys.private_key.stat().st_mode) == 0o600


def test_certs_cli_writes_files_and_exits_2_on_existing_output(tmp_path: Path):
    runner = CliRunner()
    ok = runner.invoke(cli, ["certs", "superlink", "--out", str(tmp_path), "--host", "10.0.0.5"])
    assert ok.exit_code == 0, ok.output
    assert "valid for localhost, 127.0.0.1, 10.0.0.5" in ok.output
    again = runner.invoke(cli, ["certs", "superlink", "--out", str(tmp_path)])
    assert again.exit_code == 2 and "already exist" in again.output
    team = runner.invoke(cli, ["certs", "team", "--team", "beta", "--out", str(tmp_path)])
    assert team.exit_code == 0 and (tmp_path / "beta.pub").is_file(), team.output


# ---------------------------------------------------------------------- the app flwr run sends
def test_app_config_lists_every_run_config_key_with_its_default():
    from flwr.common.config import validate_config

    project = tomllib.loads((APP / "pyproject.toml").read_text())
    ok, errors, _ = validate_config(project, check_module=True, project_dir=APP)
    assert ok, errors
    raw = project["tool"]["flwr"]["app"]["config"]
    defaults = RunConfig().to_mapping()
    # every key can be overridden with --run-config (Flower refuses keys the app does not list),
    # and the simulation's team keys (which team each virtual SuperNode plays) are empty
    assert sorted(raw) == sorted([*defaults, *SIMULATION_KEYS])
    assert {k: raw[k] for k in SIMULATION_KEYS} == dict.fromkeys(SIMULATION_KEYS, "")
    assert coordinator_config(raw) == RunConfig()


# ---------------------------------------------------------------------- the deployment
def test_supernode_with_unregistered_key_is_refused(federation: Federation, tmp_path: Path):
    stranger = write_team_keys(tmp_path, "mallory")  # a valid key pair nobody registered
    federation.start_supernode(
        "mallory",
        {"team": "mallory", "task": "movie"},
        stranger.private_key,
        federation.certs.ca_cert,
        retries=False,
    )
    log = _refused(federation, "mallory")
    assert "Failed to activate SuperNode" in log, log
    assert "No SuperNode found with the given public key" in federation.log("superlink")
    assert federation.nodes() == federation.team_nodes


def test_supernode_without_the_ca_certificate_cannot_connect(federation: Federation):
    key = write_team_keys(federation.root / "eve-keys", "eve").private_key
    federation.start_supernode("eve", {"team": "eve", "task": "movie"}, key, None, retries=False)
    log = _refused(federation, "eve")
    assert "CERTIFICATE_VERIFY_FAILED" in log, log
    assert federation.nodes() == federation.team_nodes


def _runs(fed: Federation) -> list[int]:
    out = fed.flwr("ls", "medusa", "--format", "json")
    assert out.returncode == 0, out
    return sorted(int(r["run-id"]) for r in json.loads(out.stdout)["runs"])


def test_a_site_cannot_reach_the_control_api(federation: Federation, tmp_path: Path):
    """A site holds the Fleet address and ca.crt: registering its own key, unregistering another
    team's node and starting its own app all fail there (403); the teams stay online."""
    # Prepare
    runs_before = _runs(federation)
    mallory = write_team_keys(tmp_path, "mallory")
    alpha_node = sorted(federation.team_nodes)[0]
    # Execute: the three hijacks, as a site
    attempts = {
        "register": federation.flwr(
            "supernode", "register", str(mallory.public_key), "medusa", home="site-cli"
        ),
        "unregister": federation.flwr(
            "supernode", "unregister", alpha_node, "medusa", home="site-cli"
        ),
        "run": federation.flwr(
            "run", str(PAYLOAD_APP), "medusa", "--run-config", "result='x'", home="site-cli"
        ),
        "list": federation.flwr("supernode", "list", "medusa", home="site-cli"),
    }
    # Assert: every Control call refused; nothing changed for the registered teams
    for what, out in attempts.items():
        assert out.returncode != 0, (what, out)
        said = " ".join((out.stdout + out.stderr).replace("│", " ").split())
        assert "only the Fleet API is served on this address" in said, (what, out)
    for path in ("/v1/control/list-nodes", "/v1/runtime/get-run", "/docs"):
        r = httpx.post(
            f"https://{federation.fleet_address}{path}",
            verify=str(federation.certs.ca_cert),
            timeout=10,
        )
        assert r.status_code == 403 and "only the Fleet API" in r.text, (path, r.text)
    assert federation.nodes() == federation.team_nodes
    assert _runs(federation) == runs_before


def test_the_superlink_refuses_to_serve_the_control_api_off_loopback(tmp_path: Path):
    certs = write_superlink_certs(tmp_path / "certs")
    argv = [
        *("--fleet-host", "127.0.0.1", "--fleet-port", str(free_port())),
        *("--ssl-ca-certfile", str(certs.ca_cert), "--ssl-certfile", str(certs.server_cert)),
        *("--ssl-keyfile", str(certs.server_key), "--enable-supernode-auth"),
        *("--host", "0.0.0.0", "--port", str(free_port())),
    ]
    out = subprocess.run(
        [sys.executable, "-m", "strategies.superlink", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert out.returncode == 1
    assert "--host: expected a loopback address" in out.stderr and "found '0.0.0.0'" in out.stderr


def test_large_payloads_cross_the_superlink_bit_for_bit(federation: Federation, tmp_path: Path):
    result = tmp_path / "payload.json"
    started = time.monotonic()
    run_id = federation.run(PAYLOAD_APP, {"result": str(result)})
    assert federation.wait_run(run_id, 300) == "finished:completed", federation.run_log(run_id)
    found = json.loads(result.read_text())
    assert sorted(found["nodes"]) == sorted(federation.team_nodes)
    assert found["bytes_each_way"] == 24 << 20  # 16 MiB float32 + 8 MiB uint64, > 5 MiB each
    for node, check in found["replies"].items():
        assert check == {
            "received_ok": True,
            "returned_ok": True,
            "dtypes": {"values": "float32", "indices": "uint64"},
        }, (node, check)
    print(f"payload run: {time.monotonic() - started:.1f} s, exchange {found['seconds']:.1f} s")


def test_bad_run_config_fails_the_run_at_start_with_the_reason(federation: Federation):
    run_id = federation.run(APP, {"assignment": "nope", "out-dir": "unused"})
    assert federation.wait_run(run_id, 180) == "finished:failed"
    log = federation.run_log(run_id)
    assert "run stopped: ConfigError: assignment: expected one of" in log, log


@pytest.mark.slow
def test_medusa_over_the_deployment_equals_the_inprocess_simulation(
    federation: Federation,
    tiny_bert: Path,
    tiny_tasks: dict[str, Path],
    tiny_run_config,
    tmp_path: Path,
):  # type: ignore[no-untyped-def]
    config = tiny_run_config(tiny_bert, tmp_path / "deployed", **{"stage-timeout-s": 600})
    started = time.monotonic()
    run_id = federation.run(APP, config.to_mapping())
    status = federation.wait_run(run_id, RUN_S)
    deployed_s = time.monotonic() - started
    log = federation.run_log(run_id)
    assert status == "finished:completed", log
    assert "eval: 3/3 team(s) answered" in log, log  # the stages show in `flwr log`

    teams = parse_teams(",".join(f"{t}={tiny_tasks[t]}" for t in TEAMS), uncontrolled=["gamma"])
    local = dataclasses.replace(config, out_dir=str(tmp_path / "inprocess"))
    simulate(local, teams, backend="inprocess")

    deployed, _ = RunDir(tmp_path / "deployed", readonly=True).read_tensors(
        "merged/medusa/shared.safetensors"
    )
    again, _ = RunDir(tmp_path / "inprocess", readonly=True).read_tensors(
        "merged/medusa/shared.safetensors"
    )
    assert sorted(deployed) == sorted(again)
    for name in deployed:
        assert torch.equal(deployed[name], again[name]), name
    report = json.loads((tmp_path / "deployed" / "report.json").read_text())
    assert sorted(t["name"] for t in report["teams"]) == list(TEAMS)
    assert all(t["status"] == "ok" for t in report["teams"])
    print(f"deployed Medusa run: {deployed_s:.1f} s")
