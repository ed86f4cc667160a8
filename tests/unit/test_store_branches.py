"""Branch store without models: blobs, ids and prefixes, crash safety, concurrent readers, and the
pure helpers (join ownership extension, diff, layers, YAML merge configs)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch

from medusa_fed.errors import ConfigError, MergeError, OwnershipError, StoreError
from medusa_fed.history.blobs import BlobStore
from medusa_fed.history.branches import Store, object_id
from medusa_fed.history.compare import diff_states
from medusa_fed.history.db import Database
from medusa_fed.history.describe import layer_of
from medusa_fed.history.join import extend_ownership
from medusa_fed.history.objects import add_base, add_branch, add_merge
from medusa_fed.history.remerge import load_merge_config
from medusa_fed.ownership.ownership_map import NO_OWNER, OwnershipMap
from medusa_fed.rundir.atomic import TEMP_PREFIX


@pytest.fixture
def store(tmp_path: Path) -> Store:
    with Store(tmp_path / "store") as s:
        yield s


def _delta(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "encoder.layer.0.w": torch.randn(4, 3, generator=g),
        "embeddings.b": torch.randn(5, generator=g),
    }


def test_blob_round_trip_is_content_addressed_and_hash_checked(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "blobs")
    tensors = _delta(0)
    sha = blobs.put_tensors(tensors)
    assert blobs.put_tensors(tensors) == sha  # same bytes, same blob
    got = blobs.get_tensors(sha)
    assert all(torch.equal(got[n], tensors[n]) for n in tensors)
    path = blobs.path(sha)
    path.write_bytes(path.read_bytes()[:-1] + b"\x00")  # alter one byte in place
    with pytest.raises(StoreError, match="changed after it was stored"):
        blobs.get(sha)
    with pytest.raises(StoreError, match="64-digit"):
        blobs.path("../etc")


def test_put_file_copies_bytes_and_never_shares_an_inode(tmp_path: Path) -> None:
    source = tmp_path / "delta.safetensors"
    source.write_bytes(b"payload")
    blobs = BlobStore(tmp_path / "blobs")
    sha = blobs.put_file(source, source.read_bytes())
    source.write_bytes(b"edited in place")  # a run file rewritten in place leaves the blob alone
    assert blobs.get(sha) == b"payload"


def test_objects_are_idempotent_and_resolved_by_unique_prefix(store: Store) -> None:
    base = add_base(
        store, "f" * 64, "/models/tiny", "encoder-classifier", "full", {"encoder.layer.0.w": (4, 3)}
    )
    assert add_base(store, "f" * 64, "/elsewhere/tiny", "encoder-classifier", "full") == base
    assert store.get(base).meta["sources"] == ["/models/tiny", "/elsewhere/tiny"]
    a = add_branch(store, "alpha", base, _delta(1), "free", "full", data={"task": "alpha"})
    assert add_branch(store, "alpha", base, _delta(1), "free", "full") == a
    assert len(store.db.objects("branch")) == 1
    assert store.resolve(a[:6]).id == a
    assert store.resolve(a.upper()[:10]).id == a
    with pytest.raises(StoreError, match="at least 4 hex"):
        store.resolve("ab")
    with pytest.raises(StoreError, match="no merge"):
        store.resolve(a[:8], "merge")
    assert object_id("branch", {"x": 1}) == object_id("branch", {"x": 1})
    assert object_id("branch", {"x": 1}) != object_id("merge", {"x": 1})


def test_ambiguous_prefix_lists_the_candidates(store: Store) -> None:
    with store.db.transaction() as conn:
        for digit in "12":
            Database.insert(conn, "abcd" + digit * 60, "base", f"b{digit}", "now", {})
    with pytest.raises(StoreError, match="ambiguous: base abcd11111111 \\(b1\\), base abcd2"):
        store.resolve("abcd")
    assert store.resolve("abcd2").name == "b2"


def test_reader_of_missing_store_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="medusa import"):
        Store(tmp_path / "nowhere", readonly=True)


def test_row_is_refused_when_its_blob_is_missing(store: Store) -> None:
    with pytest.raises(StoreError, match="stored before its row"):
        store.put("branch", "x", {"a": 1}, blobs={"delta": "0" * 64})
    assert store.db.objects() == []


def test_crash_after_blob_before_commit_leaves_the_store_readable(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = add_base(store, "a" * 64, "m", "encoder-classifier", "full")
    kept = add_branch(store, "alpha", base, _delta(1), "free", "full")

    def crash(*args: object, **kwargs: object) -> bool:
        raise RuntimeError("power cut")

    monkeypatch.setattr(Database, "insert", staticmethod(crash))
    with pytest.raises(RuntimeError, match="power cut"):
        add_branch(store, "beta", base, _delta(2), "free", "full")
    monkeypatch.undo()
    reader = Store(store.root, readonly=True)
    assert [r.id for r in reader.db.objects("branch")] == [kept]
    assert reader.verify() == []
    assert len(reader.orphans()) == 1  # beta's delta: written, never referred to
    assert add_branch(store, "beta", base, _delta(2), "free", "full")  # the retry works
    assert store.orphans() == []


def test_killed_writer_mid_transaction_rolls_back(tmp_path: Path) -> None:
    root = tmp_path / "store"
    with Store(root) as s:
        base = add_base(s, "b" * 64, "m", "encoder-classifier", "full")
    script = textwrap.dedent(f"""
        import os, torch
        from medusa_fed.history.branches import Store
        from medusa_fed.history.db import Database
        s = Store({str(root)!r})
        sha = s.blobs.put_tensors({{"w": torch.ones(3)}})
        with s.db.transaction() as conn:
            Database.record_blob(conn, sha, 1, "delta")
            Database.insert(conn, "c" * 64, "branch", "ghost", "now", {{}})
            (s.blobs.root / "ab").mkdir(exist_ok=True)
            (s.blobs.root / "ab" / "{TEMP_PREFIX}half").write_bytes(b"half a blob")
            os._exit(9)  # killed before COMMIT
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 9, proc.stderr
    reader = Store(root, readonly=True)
    assert reader.db.get("c" * 64) is None
    assert [r.id for r in reader.db.objects()] == [base]
    assert reader.verify() == []
    assert len(reader.orphans()) == 1  # the blob written before the killed transaction
    half = root / "blobs" / "ab" / f"{TEMP_PREFIX}half"
    with Store(root) as writer:  # a fresh temp file may be another writer's: left alone
        assert half.is_file()
    os.utime(half, (0, 0))  # an hour-old one was left by a crash
    with Store(root) as writer:  # a writer cleans it and goes on
        assert not half.exists()
        add_branch(writer, "alpha", base, _delta(3), "free", "full")


def test_concurrent_readers_always_find_the_blobs_of_committed_rows(tmp_path: Path) -> None:
    root = tmp_path / "store"
    with Store(root) as s:
        base = add_base(s, "d" * 64, "m", "encoder-classifier", "full")
    errors: list[BaseException] = []
    done = threading.Event()

    def write() -> None:
        try:
            with Store(root) as w:
                for i in range(30):
                    add_branch(w, f"t{i}", base, _delta(i), "free", "full")
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
        finally:
            done.set()

    def read() -> None:
        try:
            with Store(root, readonly=True) as r:
                seen = 0
                while not done.is_set() or seen < 31:
                    rows = r.db.objects()
                    assert len(rows) >= seen
                    seen = len(rows)
                    for row in rows[-3:]:
                        for sha in row.meta["blobs"].values():
                            r.blobs.get(sha)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [
        threading.Thread(target=write),
        threading.Thread(target=read),
        threading.Thread(target=read),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert len(Store(root, readonly=True).db.objects("branch")) == 30


def test_merge_row_records_inputs_in_key_order(store: Store) -> None:
    base = add_base(store, "9" * 64, "m", "encoder-classifier", "full")
    b1 = add_branch(store, "beta", base, _delta(1), "free", "full")
    b2 = add_branch(store, "alpha", base, _delta(2), "free", "full")
    m = add_merge(store, base, {"beta": b1, "alpha": b2}, {"method": "linear"}, _delta(3))
    assert [e.parent for e in store.db.parents(m, "branch")] == [b2, b1]
    assert store.parent(m, "start").id == base
    with pytest.raises(StoreError, match="at least one branch"):
        add_merge(store, base, {}, {"method": "linear"}, _delta(3))


def test_extend_ownership_free_takes_exactly_the_unowned_elements() -> None:
    owners = {"w": torch.tensor([[0, 1, NO_OWNER], [NO_OWNER, 0, 1]], dtype=torch.uint8)}
    old = OwnershipMap(("alpha", "beta"), owners)
    new = extend_ownership(old, "delta")
    assert new.teams == ("alpha", "beta", "delta")
    assert torch.equal(new.mask("delta")["w"], owners["w"] == NO_OWNER)
    assert torch.equal(new.mask("alpha")["w"], old.mask("alpha")["w"])  # nobody else changes
    taken = extend_ownership(
        OwnershipMap(("a", "b"), {"w": torch.zeros(100, 100, dtype=torch.uint8)}),
        "c",
        policy="take",
        take=0.25,
        seed=1,
    )
    assert 0.2 < taken.owned_count("c") / 10_000 < 0.3
    with pytest.raises(OwnershipError, match="0 elements"):
        extend_ownership(OwnershipMap(("a",), {"w": torch.zeros(3, dtype=torch.uint8)}), "c")
    with pytest.raises(OwnershipError, match="already"):
        extend_ownership(old, "beta")
    with pytest.raises(OwnershipError, match="policy"):
        extend_ownership(old, "c", policy="take", take=0.0)


def test_diff_states_counts_elements_and_magnitudes() -> None:
    a = {"x": torch.zeros(4), "y": torch.ones(2), "only_a": torch.ones(1)}
    b = {"x": torch.tensor([0.0, 3.0, 0.0, -4.0]), "y": torch.ones(2), "only_b": torch.ones(1)}
    got = {d.name: d for d in diff_states(a, b)}
    assert (got["x"].differing, got["x"].max_abs, got["x"].l2) == (2, 4.0, 5.0)
    assert got["y"].differing == 0
    assert got["only_a"].only_in == "a" and got["only_b"].only_in == "b"


def test_layer_names_group_by_block() -> None:
    assert layer_of("encoder.layer.3.attention.self.query.weight") == "encoder.layer.3"
    assert layer_of("embeddings.word_embeddings.weight") == "embeddings"
    assert (
        layer_of("base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight")
        == "base_model.model.bert.encoder.layer.0"
    )


def test_yaml_merge_config_mergekit_style(tmp_path: Path) -> None:
    path = tmp_path / "merge.yml"
    path.write_text(
        "merge_method: dare_ties\nparameters: {drop_rate: 0.5, seed: 3}\n"
        "models:\n  - model: e0ae43e0\n  - model: a5243247\nhead: alpha\n"
    )
    refs, spec, head = load_merge_config(path)
    assert refs == ["e0ae43e0", "a5243247"] and head == "alpha"
    assert (spec.method, spec.drop_rate, spec.seed) == ("dare_ties", 0.5, 3)
    path.write_text("method: ties\nbranches: [abcd]\nparameters: {weight: 1}\n")
    with pytest.raises(ConfigError, match="weight"):
        load_merge_config(path)
    path.write_text("method: nope\nbranches: [abcd]\n")
    with pytest.raises(ConfigError, match="unknown merge method"):
        load_merge_config(path)
    assert issubclass(MergeError, ValueError)
