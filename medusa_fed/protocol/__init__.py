"""The Medusa protocol: typed requests and replies (:mod:`.messages`, Flower-free) and their
Flower records (:mod:`.flower`, imported explicitly by strategies/ and clients/ only)."""

from medusa_fed.protocol.messages import *  # noqa: F403
from medusa_fed.protocol.messages import __all__  # noqa: F401
