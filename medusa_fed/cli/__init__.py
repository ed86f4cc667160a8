"""The ``medusa`` command line. Importing this package registers every sub-command on ``app``."""

from medusa_fed.cli.app import app

# Each module below adds its commands to ``app`` when imported (one line per module).

__all__ = ["app"]
