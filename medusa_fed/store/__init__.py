"""store: the coordinator's run directory (atomic, hash-checked files and stage bookkeeping)."""

from medusa_fed.store.run_dir import RunDir

__all__ = ["RunDir"]
