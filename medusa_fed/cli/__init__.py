"""The ``medusa`` command line. Importing this package registers every sub-command on ``app``."""

# Each module below adds its commands to ``app`` when imported (one line per module).
from medusa_fed.cli import assign as _assign  # noqa: E402,F401  medusa assign
from medusa_fed.cli import bench as _bench  # noqa: E402,F401  medusa bench
from medusa_fed.cli import branches as _branches  # noqa: E402,F401  medusa merge/export/join
from medusa_fed.cli import certs as _certs  # noqa: E402,F401  medusa certs
from medusa_fed.cli import history as _history  # noqa: E402,F401  medusa import/log/show/diff
from medusa_fed.cli import simulate as _simulate  # noqa: E402,F401  medusa simulate
from medusa_fed.cli import train as _train  # noqa: E402,F401  medusa train
from medusa_fed.cli.app import app, main

__all__ = ["app", "main"]
