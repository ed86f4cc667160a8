"""OwnershipMap: masks, counts, summary, safetensors round trip, load validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from medusa_fed.errors import OwnershipError
from medusa_fed.ownership import NO_OWNER, OwnershipMap


def small_map() -> OwnershipMap:
    owners = {
        "a.weight": torch.tensor([[0, 1, 1], [NO_OWNER, 0, 1]], dtype=torch.uint8),
        "b.bias": torch.tensor([1, 1, 0, 0], dtype=torch.uint8),
    }
    return OwnershipMap(("legal", "med"), owners, uncontrolled=("spam",))


def test_masks_counts_and_summary() -> None:
    # Prepare
    omap = small_map()
    # Execute
    legal, spam = omap.mask("legal"), omap.mask("spam")
    summary = omap.summary()
    # Assert
    assert legal["a.weight"].tolist() == [[True, False, False], [False, True, False]]
    assert all(bool(m.all()) for m in spam.values())
    assert omap.owned_counts() == {"legal": 4, "med": 5, "spam": 0}
    assert omap.owned_count("med") == 5
    assert summary["share"] == {"legal": 4 / 10, "med": 5 / 10}
    assert summary["unowned"] == pytest.approx(0.1)
    assert summary["tensors"]["b.bias"] == {
        "numel": 4,
        "share": {"legal": 0.5, "med": 0.5},
        "unowned": 0.0,
    }
    json.dumps(summary)  # JSON-able


def test_unknown_team_is_refused() -> None:
    omap = small_map()
    with pytest.raises(OwnershipError, match="unknown team 'tax'"):
        omap.mask("tax")


def test_save_load_round_trip(tmp_path: Path) -> None:
    # Prepare
    omap = small_map()
    # Execute
    omap.save(tmp_path / "own.safetensors")
    back = OwnershipMap.load(tmp_path / "own.safetensors")
    # Assert
    assert back.teams == omap.teams and back.uncontrolled == omap.uncontrolled
    assert set(back.owners) == set(omap.owners)
    for name, ids in omap.owners.items():
        assert torch.equal(back.owners[name], ids)


def _write(path: Path, tensors: dict[str, torch.Tensor], meta: dict | None) -> Path:
    save_file(
        tensors,
        str(path),
        metadata=None if meta is None else {"medusa_ownership": json.dumps(meta)},
    )
    return path


META = {"format": 1, "teams": ["a", "b"], "uncontrolled": []}


@pytest.mark.parametrize(
    ("tensors", "meta", "match"),
    [
        ({"x": torch.tensor([0, 2], dtype=torch.uint8)}, META, "owner id 2"),
        ({"x": torch.tensor([0, 1], dtype=torch.int64)}, META, "expected uint8"),
        ({"x": torch.tensor([0, 1], dtype=torch.uint8)}, None, "expected metadata key"),
        ({"x": torch.tensor([0], dtype=torch.uint8)}, {**META, "format": 9}, "format"),
    ],
)
def test_load_rejects_malformed_files(tmp_path: Path, tensors, meta, match) -> None:
    path = _write(tmp_path / "bad.safetensors", tensors, meta)
    with pytest.raises(OwnershipError, match=match):
        OwnershipMap.load(path)


def test_load_rejects_non_safetensors(tmp_path: Path) -> None:
    path = tmp_path / "junk.safetensors"
    path.write_bytes(b"not a file")
    with pytest.raises(OwnershipError, match="not a readable safetensors"):
        OwnershipMap.load(path)


def test_too_many_teams_names_the_limit() -> None:
    teams = tuple(f"t{i}" for i in range(255))
    with pytest.raises(OwnershipError, match="at most 254 controllable teams"):
        OwnershipMap(teams, {})


def test_duplicate_team_across_kinds_is_refused() -> None:
    with pytest.raises(OwnershipError, match="unique"):
        OwnershipMap(("a",), {}, uncontrolled=("a",))
