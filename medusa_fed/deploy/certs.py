"""TLS certificates for the SuperLink and SuperNode-authentication key pairs for team sites.

What Flower 1.41 expects (read from its sources, tested by ``tests/test_deployment.py``):

- ``flower-superlink --ssl-ca-certfile ca.crt --ssl-certfile server.crt --ssl-keyfile server.key``
  serves its one HTTPS port (Fleet, Control and Runtime APIs) with the server certificate; a
  SuperNode (``--root-certificates ca.crt``) and ``flwr`` (``root-certificates`` in its config)
  check it against the CA, so the certificate must name the address they dial (SANs).
- ``flower-supernode --auth-supernode-private-key <team>.key`` reads an OpenSSH-format EC
  private key (``load_ssh_private_key``, a NIST curve); ``flwr supernode register <team>.pub``
  reads the OpenSSH public key (``ecdsa-sha2-nistp384 AAAA... comment``), the format
  ``ssh-keygen -t ecdsa -b 384`` writes. A SuperLink started with ``--enable-supernode-auth``
  refuses a SuperNode whose public key was not registered.

Every file is written atomically (temporary file, fsync, rename); private keys get mode 0600
from the moment they exist. Existing outputs are an error unless ``force`` is set.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from medusa_fed.errors import ConfigError
from medusa_fed.rundir.atomic import atomic_write

DEFAULT_HOSTS = ("localhost", "127.0.0.1")  # the SuperLink listens on loopback by default
PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9*]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
_TEAM = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class SuperLinkCerts:
    """Where the coordinator's TLS files live (one directory)."""

    ca_cert: Path  # hand this one (public) to every team site and to whoever runs `flwr`
    ca_key: Path  # signs server certificates; keep it off the SuperLink machine if you can
    server_cert: Path
    server_key: Path

    @classmethod
    def in_dir(cls, out: Path) -> SuperLinkCerts:
        return cls(out / "ca.crt", out / "ca.key", out / "server.crt", out / "server.key")


@dataclass(frozen=True)
class TeamKeys:
    """A team site's SuperNode-authentication key pair."""

    private_key: Path  # stays at the team site: flower-supernode --auth-supernode-private-key
    public_key: Path  # goes to the coordinator: flwr supernode register <this file>

    @classmethod
    def in_dir(cls, out: Path, team: str) -> TeamKeys:
        return cls(out / f"{team}.key", out / f"{team}.pub")


def write_superlink_certs(
    out: Path, hosts: Sequence[str] = (), days: int = 365, force: bool = False
) -> SuperLinkCerts:
    """Create a CA and a SuperLink server certificate signed by it in ``out``.

    Parameters
    ----------
    out : Path
        Directory for ``ca.crt``, ``ca.key``, ``server.crt``, ``server.key`` (created if missing).
    hosts : Sequence[str] (default: ())
        Extra names or IP addresses the SuperLink is reached at; ``localhost`` and ``127.0.0.1``
        are always included.
    days : int (default: 365)
        Validity of both certificates.
    force : bool (default: False)
        Replace existing files (certificates signed by the old CA stop verifying).
    """
    if days < 1:
        raise ConfigError(f"days must be >= 1, found {days}")
    names = _san_entries([*DEFAULT_HOSTS, *hosts])
    paths = SuperLinkCerts.in_dir(out)
    _refuse_existing([paths.ca_cert, paths.ca_key, paths.server_cert, paths.server_key], force)

    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)  # tolerate clock skew
    until = now + dt.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "medusa-fed coordinator CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA384())
    )

    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, str(names[0].value))]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(server_key.public_key()), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA384())
    )

    _write(paths.ca_key, _pem_key(ca_key), PRIVATE_MODE)
    _write(paths.server_key, _pem_key(server_key), PRIVATE_MODE)
    _write(paths.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM), PUBLIC_MODE)
    _write(paths.server_cert, server_cert.public_bytes(serialization.Encoding.PEM), PUBLIC_MODE)
    return paths


def write_team_keys(out: Path, team: str, force: bool = False) -> TeamKeys:
    """Create a team's SuperNode-authentication key pair (ECDSA P-384, OpenSSH format) in ``out``.

    Writes ``<team>.key`` (private, mode 0600) and ``<team>.pub`` (``ecdsa-sha2-nistp384 ...
    medusa-team-<team>``).
    """
    if not _TEAM.match(team):
        raise ConfigError(f"team name must be 1-64 letters, digits, '-' or '_', found {team!r}")
    paths = TeamKeys.in_dir(out, team)
    _refuse_existing([paths.private_key, paths.public_key], force)
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    _write(paths.private_key, private, PRIVATE_MODE)
    _write(paths.public_key, public + f" medusa-team-{team}\n".encode(), PUBLIC_MODE)
    return paths


def certificate_names(cert_path: Path) -> list[str]:
    """The DNS names and IP addresses a certificate is valid for (its SANs)."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(v) for v in san.get_values_for_type(x509.DNSName)] + [
        str(v) for v in san.get_values_for_type(x509.IPAddress)
    ]


# ---------------------------------------------------------------------------- helpers
def _san_entries(hosts: Iterable[str]) -> list[x509.GeneralName]:
    """SAN entries, IP addresses as IPAddress and names as DNSName, duplicates dropped."""
    out: list[x509.GeneralName] = []
    seen: set[str] = set()
    for raw in hosts:
        host = raw.strip().strip("[]")
        if not host or host.lower() in seen:
            continue
        seen.add(host.lower())
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            if not _HOSTNAME.match(host):
                raise ConfigError(
                    f"--host {raw!r} is neither an IP address nor a DNS name; expected e.g. "
                    "coordinator.example.org or 10.0.0.5 (no scheme, no port)"
                ) from None
            out.append(x509.DNSName(host))
    return out


def _key_usage(cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _refuse_existing(paths: Sequence[Path], force: bool) -> None:
    existing = [str(p) for p in paths if p.exists()]
    if existing and not force:
        raise ConfigError(
            f"{', '.join(existing)} already exist(s); nothing was written. Choose another output "
            "directory, or pass --force to replace them (anything signed by or registered with "
            "the old files stops working)"
        )


def _write(path: Path, data: bytes, mode: int) -> None:
    """Atomically write ``data`` to ``path`` with ``mode``, set before any byte is written."""
    atomic_write(path, data, mode=mode)
