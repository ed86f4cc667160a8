"""The coordinator's SuperLink with the Control API out of the sites' reach.

Flower 1.42 serves the Fleet API (SuperNodes), the Control API (``flwr run``, ``flwr supernode
register / unregister``) and the runtime API (the ServerApp's SuperExec) on ONE listener, and the
Control API has no authentication outside Flower's enterprise edition (OIDC). A site that can
reach the SuperLink could register its own key, unregister another team's node and ``flwr run``
its own app on every site. So this launcher serves Flower's own SuperLink application twice:

- on ``--host`` / ``--port`` (must be loopback): every API, for the coordinator's operator, its
  ``flwr`` CLI and the SuperExec that runs the ServerApp;
- on ``--fleet-host`` / ``--fleet-port`` (the address sites are given): the Fleet API
  (``/v1/fleet/*``) and ``/health`` only; every other path is answered 403 before Flower sees it.

Nothing else changes: the same TLS certificate, the same SuperNode authentication (the signed
requests reach Flower's own NodeAuthMiddleware unchanged), the same state. Every other argument is
flower-superlink's own::

    python -m strategies.superlink --fleet-host 0.0.0.0 --fleet-port 9092 \\
        --ssl-ca-certfile certs/ca.crt --ssl-certfile certs/server.pem \\
        --ssl-keyfile certs/server.key --enable-supernode-auth --host 127.0.0.1 --port 9093
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import ipaddress
import sys
from collections.abc import Iterator
from typing import Any

import uvicorn

FLEET_PATHS = ("/v1/fleet/", "/health")  # what a site may reach


class FleetOnly:
    """ASGI wrapper: pass Fleet API and health requests on, answer 403 to every other path."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":  # the operator listener runs the app's lifespan
            return
        path = str(scope.get("path", ""))
        if scope["type"] == "http" and (path == "/health" or path.startswith(FLEET_PATHS[0])):
            await self.app(scope, receive, send)
            return
        body = b'{"detail":"only the Fleet API is served on this address"}'
        await send(
            {
                "type": "http.response.start",
                "status": 403,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class _NoSignals(uvicorn.Server):
    """A second server in the same loop: the first one owns the signal handlers."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _own_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="python -m strategies.superlink",
        description="flower-superlink with the Control API on loopback only "
        "(other arguments: flower-superlink's)",
    )
    parser.add_argument("--fleet-host", required=True, help="address the sites connect to")
    parser.add_argument("--fleet-port", type=int, required=True)
    return parser.parse_known_args(argv)


def check_loopback(host: str) -> None:
    """The full listener serves the Control API: it must not be reachable from another machine."""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        sys.exit(
            f"--host: expected a loopback address (127.0.0.1, ::1 or localhost) for the listener "
            f"that serves the Control API, found {host!r}; give the sites --fleet-host instead"
        )


def main(argv: list[str] | None = None) -> None:
    """Parse our two options, hand the rest to flower-superlink's parser, serve both listeners."""
    from flwr.supercore.http_logging import get_uvicorn_log_config
    from flwr.supercore.logger import console_handler
    from flwr.superlink.main import create_app

    # the module (flwr.superlink.cli re-exports a function of the same name)
    fs = importlib.import_module("flwr.superlink.cli.flower_superlink")

    own, rest = _own_args(sys.argv[1:] if argv is None else argv)
    sys.argv = [sys.argv[0], *rest]
    config = fs._parse_superlink_lifespan_config()  # flower-superlink's own parsing and checks
    check_loopback(config.host)
    app = create_app(config, fs.SuperLinkLifespan)
    tls = {"ssl_keyfile": config.ssl_keyfile, "ssl_certfile": config.ssl_certfile}
    log_config = get_uvicorn_log_config(console_handler.level)
    full = uvicorn.Server(
        uvicorn.Config(app, host=config.host, port=config.port, log_config=log_config, **tls)
    )
    fleet = _NoSignals(
        uvicorn.Config(
            FleetOnly(app),
            host=own.fleet_host,
            port=own.fleet_port,
            lifespan="off",
            log_config=log_config,
            **tls,
        )
    )

    async def serve() -> None:
        task = asyncio.create_task(fleet.serve())
        try:
            await full.serve()
        finally:
            fleet.should_exit = True
            await task

    asyncio.run(serve())


if __name__ == "__main__":
    main()
