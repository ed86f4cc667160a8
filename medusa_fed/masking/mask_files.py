"""Read a team's mask from disk: a mask file, or the coordinator's ownership map plus a team name.

* mask file: safetensors of bool / uint8 (0/1) tensors named as the shared space.
* ownership map: safetensors of uint8 owner ids (id ``i`` = ``teams[i]``, 255 = nobody) whose
  metadata key ``medusa_ownership`` (or a plain ``teams`` key) holds JSON with ``teams`` and
  optionally ``uncontrolled``. Read directly with safetensors + json, so the team side needs no
  coordinator code.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from medusa_fed.masking.masked_update import MaskError

OWNERSHIP_KEY = "medusa_ownership"
NO_OWNER = 255


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt") as handle:
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
            return tensors, dict(handle.metadata() or {})
    except (OSError, ValueError, SafetensorError) as exc:
        raise MaskError(f"{path}: expected a safetensors mask or ownership file ({exc})") from exc


def load_mask(path: Path) -> dict[str, torch.Tensor]:
    """bool masks from a mask file (bool or 0/1 uint8 tensors)."""
    tensors, _ = _read(path)
    out: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        if t.dtype == torch.uint8 and bool((t > 1).any()):
            raise MaskError(
                f"{path}: {name} holds values other than 0/1; expected a mask (for an ownership "
                "map pass --ownership with --team)"
            )
        if t.dtype not in (torch.bool, torch.uint8):
            raise MaskError(f"{path}: {name} expected bool or uint8, found {t.dtype}")
        out[name] = t.to(torch.bool)
    return out


def mask_from_ownership(path: Path, team: str) -> dict[str, torch.Tensor] | None:
    """``team``'s mask from an ownership map; None if the team is uncontrolled (unmasked)."""
    tensors, metadata = _read(path)
    raw = metadata.get(OWNERSHIP_KEY)
    try:
        meta = json.loads(raw) if raw is not None else {"teams": json.loads(metadata["teams"])}
        teams, uncontrolled = list(meta["teams"]), list(meta.get("uncontrolled", []))
    except (KeyError, TypeError, ValueError) as exc:
        raise MaskError(
            f"{path}: expected ownership metadata {OWNERSHIP_KEY!r} or 'teams' (JSON), found "
            f"keys {sorted(metadata)}"
        ) from exc
    if team in uncontrolled:
        return None
    if team not in teams:
        raise MaskError(
            f"team {team!r} is not in the ownership map {path} (teams {teams}, uncontrolled "
            f"{uncontrolled}); check --team"
        )
    owner = teams.index(team)
    return {name: ids == owner for name, ids in tensors.items()}
