"""rundir: one run's directory at the coordinator: atomic, sha256-checked files (manifest.json),
so a coordinator killed between any two writes resumes from what is intact."""

from medusa_fed.rundir.run_dir import RunDir

__all__ = ["RunDir"]
