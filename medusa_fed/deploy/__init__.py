"""Real deployment on Flower's SuperLink + SuperNodes: TLS certificates, team keys, the app dir.

Plain library code (the ``cryptography`` package, no Flower imports); ``medusa certs`` is its CLI
and ``deploy/app/pyproject.toml`` at the top of the repository is the app ``flwr run`` launches.
"""

from medusa_fed.deploy.certs import (
    SuperLinkCerts,
    TeamKeys,
    write_superlink_certs,
    write_team_keys,
)

__all__ = ["SuperLinkCerts", "TeamKeys", "write_superlink_certs", "write_team_keys"]
