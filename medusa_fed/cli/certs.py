"""``medusa certs``: TLS files for the SuperLink and SuperNode-authentication keys for team sites.

Examples (docs/deployment.md has the whole deployment)::

    medusa certs superlink --out deploy/certs                          # coordinator: CA + server
    medusa certs superlink --out deploy/certs --host coord.example.org  # also reachable by name
    medusa certs team --team alpha --out deploy/keys                   # a team site's key pair

Private keys are written with mode 0600; existing files are refused unless ``--force``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from typer import Option

from medusa_fed.cli.app import app

certs_app = typer.Typer(
    help="Create TLS certificates (coordinator) and SuperNode key pairs (team sites).",
    no_args_is_help=True,
)
app.add_typer(certs_app, name="certs")


@certs_app.command()
def superlink(
    out: Annotated[Path, Option(help="Directory for ca.crt, ca.key, server.crt, server.key.")],
    host: Annotated[
        list[str] | None,
        Option(
            help="Extra DNS name or IP the SuperLink is reached at (repeatable); localhost and "
            "127.0.0.1 are always included."
        ),
    ] = None,
    days: Annotated[int, Option(help="Validity of the certificates in days.")] = 365,
    force: Annotated[bool, Option("--force", help="Replace existing files.")] = False,
) -> None:
    """Create a CA and the SuperLink's TLS server certificate signed by it."""
    from medusa_fed.deploy.certs import certificate_names, write_superlink_certs
    from medusa_fed.errors import MedusaError

    try:
        paths = write_superlink_certs(out, host or [], days=days, force=force)
    except MedusaError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"CA certificate   {paths.ca_cert}  (public: give it to every team site)")
    typer.echo(f"CA key           {paths.ca_key}  (private, 0600)")
    typer.echo(
        f"server cert      {paths.server_cert}  valid for "
        f"{', '.join(certificate_names(paths.server_cert))}"
    )
    typer.echo(f"server key       {paths.server_key}  (private, 0600)")


@certs_app.command()
def team(
    team: Annotated[str, Option(help="The team's name (file names <team>.key, <team>.pub).")],
    out: Annotated[Path, Option(help="Directory for the key pair.")],
    force: Annotated[bool, Option("--force", help="Replace existing files.")] = False,
) -> None:
    """Create a team site's SuperNode-authentication key pair (ECDSA P-384, OpenSSH format)."""
    from medusa_fed.deploy.certs import write_team_keys
    from medusa_fed.errors import MedusaError

    try:
        paths = write_team_keys(out, team, force=force)
    except MedusaError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(
        f"private key  {paths.private_key}  (private, 0600: "
        "flower-supernode --auth-supernode-private-key)"
    )
    typer.echo(
        f"public key   {paths.public_key}  (send to the coordinator: "
        f"flwr supernode register {paths.public_key} <superlink>)"
    )
