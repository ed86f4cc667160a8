"""The ownership map: one owner id (uint8) per element of every shared tensor.

Owner id ``i`` means ``teams[i]``; :data:`NO_OWNER` (255) means the element stays at the base.
Uncontrolled teams refused masks: they own nothing, and their mask is all-True (they train
everything). On disk the map is ONE safetensors file of uint8 tensors whose metadata key
``medusa_ownership`` holds ``{"format": 1, "teams": [...], "uncontrolled": [...]}`` as JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_save

from medusa_fed.errors import OwnershipError
from medusa_fed.rundir.atomic import atomic_write

NO_OWNER: int = 255  # element owned by nobody: stays at the base
MAX_TEAMS: int = 254  # controllable teams that fit a uint8 owner id next to NO_OWNER
METADATA_KEY = "medusa_ownership"
FORMAT_VERSION = 1


def check_team_count(n: int) -> None:
    """Raise OwnershipError when ``n`` controllable teams do not fit a uint8 owner id."""
    if n > MAX_TEAMS:
        raise OwnershipError(
            f"at most {MAX_TEAMS} controllable teams fit a uint8 owner id (255 is NO_OWNER), "
            f"found {n}; run fewer teams or mark some uncontrolled"
        )


@dataclass(frozen=True)
class OwnershipMap:
    """Who may change each parameter element.

    teams : tuple[str, ...]
        Controllable teams; owner id ``i`` means ``teams[i]``.
    owners : dict[str, torch.Tensor]
        uint8 owner ids, one tensor per shared parameter, same shape as the parameter.
    uncontrolled : tuple[str, ...] (default: ())
        Teams that refused masks; they own nothing and train unmasked.
    """

    teams: tuple[str, ...]
    owners: dict[str, torch.Tensor]
    uncontrolled: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_team_count(len(self.teams))
        names = list(self.teams) + list(self.uncontrolled)
        if len(set(names)) != len(names) or not all(isinstance(t, str) and t for t in names):
            raise OwnershipError(
                f"team names must be non-empty and unique across controllable and uncontrolled "
                f"teams, found teams={list(self.teams)} uncontrolled={list(self.uncontrolled)}"
            )
        for name, ids in self.owners.items():
            if ids.dtype != torch.uint8:
                raise OwnershipError(
                    f"{name}: expected uint8 owner ids, found {ids.dtype}; map not built"
                )

    def _team_id(self, team: str) -> int:
        if team in self.teams:
            return self.teams.index(team)
        if team in self.uncontrolled:
            return -1
        raise OwnershipError(
            f"unknown team {team!r}: expected one of {list(self.teams)} (controllable) or "
            f"{list(self.uncontrolled)} (uncontrolled); no mask given"
        )

    def mask(self, team: str) -> dict[str, torch.Tensor]:
        """Bool masks (True = the team may change the element); all-True if uncontrolled."""
        tid = self._team_id(team)
        if tid < 0:
            return {n: torch.ones(o.shape, dtype=torch.bool) for n, o in self.owners.items()}
        return {n: o == tid for n, o in self.owners.items()}

    def owned_count(self, team: str) -> int:
        """Number of elements ``team`` owns (0 for an uncontrolled team)."""
        tid = self._team_id(team)
        if tid < 0:
            return 0
        return sum(int((o == tid).sum()) for o in self.owners.values())

    def _counts(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.bincount(ids.reshape(-1), minlength=256)[:256]

    def owned_counts(self) -> dict[str, int]:
        """Elements owned per team, controllable teams first, uncontrolled teams (0) after."""
        total = torch.zeros(256, dtype=torch.int64)
        for o in self.owners.values():
            total += self._counts(o)
        out = {t: int(total[i]) for i, t in enumerate(self.teams)}
        out.update({t: 0 for t in self.uncontrolled})
        return out

    def summary(self) -> dict:
        """JSON-able shares: per team over all elements; per tensor ``{numel, share, unowned}``."""
        grand = torch.zeros(256, dtype=torch.int64)
        tensors: dict[str, dict] = {}
        for name, o in self.owners.items():
            c = self._counts(o)
            grand += c
            n = max(o.numel(), 1)
            tensors[name] = {
                "numel": o.numel(),
                "share": {t: int(c[i]) / n for i, t in enumerate(self.teams)},
                "unowned": int(c[NO_OWNER]) / n,
            }
        n_all = sum(o.numel() for o in self.owners.values())
        d = max(n_all, 1)
        return {
            "teams": list(self.teams),
            "uncontrolled": list(self.uncontrolled),
            "numel": n_all,
            "share": {t: int(grand[i]) / d for i, t in enumerate(self.teams)},
            "unowned": int(grand[NO_OWNER]) / d,
            "tensors": tensors,
        }

    def save(self, path: str | Path) -> None:
        """Write the map atomically as one safetensors file (uint8 tensors + JSON metadata)."""
        meta = {"format": FORMAT_VERSION, "teams": list(self.teams)}
        meta["uncontrolled"] = list(self.uncontrolled)
        data = safetensors_save(
            {n: o.contiguous() for n, o in self.owners.items()},
            metadata={METADATA_KEY: json.dumps(meta)},
        )
        atomic_write(Path(path), data)

    @classmethod
    def load(cls, path: str | Path) -> OwnershipMap:
        """Read and validate a map written by :meth:`save`; raise OwnershipError if malformed."""
        path = Path(path)
        try:
            with safe_open(str(path), framework="pt") as f:
                raw = (f.metadata() or {}).get(METADATA_KEY)
                owners = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not a dict
        except OwnershipError:
            raise
        except Exception as e:  # safetensors raises its own error types
            raise OwnershipError(f"{path}: not a readable safetensors ownership map ({e})") from e
        if raw is None:
            raise OwnershipError(f"{path}: expected metadata key {METADATA_KEY!r}, found none")
        try:
            meta = json.loads(raw)
            teams, uncontrolled = tuple(meta["teams"]), tuple(meta["uncontrolled"])
        except (ValueError, KeyError, TypeError) as e:
            raise OwnershipError(f"{path}: malformed ownership metadata {raw!r} ({e})") from e
        if meta.get("format") != FORMAT_VERSION:
            raise OwnershipError(
                f"{path}: expected format {FORMAT_VERSION}, found {meta.get('format')!r}"
            )
        out = cls(teams, owners, uncontrolled)
        for name, ids in owners.items():
            bad = (ids >= len(teams)) & (ids != NO_OWNER)
            if bool(bad.any()):
                raise OwnershipError(
                    f"{path}: {name} holds owner id {int(ids[bad].reshape(-1)[0])}, expected "
                    f"< {len(teams)} or {NO_OWNER} (NO_OWNER); map rejected"
                )
        return out
