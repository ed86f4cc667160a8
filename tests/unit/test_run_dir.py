"""RunDir: round trips, hash checks, stage bookkeeping and rejection records."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from medusa_fed.errors import StoreError
from medusa_fed.rundir import RunDir


@pytest.fixture
def run(tmp_path: Path) -> RunDir:
    return RunDir(tmp_path / "run")


def test_tensors_round_trip_with_metadata_and_dtypes(run: RunDir) -> None:
    # Prepare
    tensors = {
        "w": torch.randn(3, 4),
        "idx": torch.arange(5, dtype=torch.int64),
        "mask": torch.tensor([True, False, True]),
        "half": torch.randn(2).to(torch.float16),
        "bf": torch.randn(2).to(torch.bfloat16),
    }
    # Execute
    sha = run.write_tensors("probe/movie.safetensors", tensors, {"team": "movie", "d": "0.2"})
    got, meta = run.read_tensors("probe/movie.safetensors")
    # Assert
    assert set(got) == set(tensors)
    for name, t in tensors.items():
        assert got[name].dtype == t.dtype and torch.equal(got[name], t)
    assert meta == {"team": "movie", "d": "0.2"}
    on_disk = (run.root / "probe/movie.safetensors").read_bytes()
    assert sha == hashlib.sha256(on_disk).hexdigest()


def test_manifest_records_hash_size_and_time(run: RunDir) -> None:
    # Execute
    run.write_json("hello/movie.json", {"task": "movie", "controlled": True})
    # Assert
    manifest = json.loads((run.root / "manifest.json").read_text())
    data = (run.root / "hello/movie.json").read_bytes()
    entry = manifest["hello/movie.json"]
    assert entry["sha256"] == hashlib.sha256(data).hexdigest()
    assert entry["bytes"] == len(data)
    assert entry["written_at"].startswith("20")
    assert "pending" not in entry
    assert run.read_json("hello/movie.json") == {"task": "movie", "controlled": True}


def test_tied_tensors_are_stored(run: RunDir) -> None:
    # Prepare: two names, one storage (like tied embeddings)
    w = torch.randn(4, 2)
    # Execute
    run.write_tensors("train/a.safetensors", {"emb": w, "head": w, "row": w[1]})
    got, _ = run.read_tensors("train/a.safetensors")
    # Assert
    assert torch.equal(got["emb"], w) and torch.equal(got["head"], w)
    assert torch.equal(got["row"], w[1])


@settings(max_examples=20, deadline=None)
@given(data=st.binary(max_size=2048), rel=st.sampled_from(["a.bin", "x/y/z.bin", "./b.bin"]))
def test_bytes_round_trip_property(
    tmp_path_factory: pytest.TempPathFactory, data: bytes, rel: str
) -> None:
    # Prepare
    run = RunDir(tmp_path_factory.mktemp("run"))
    # Execute
    run.write_bytes(rel, data)
    # Assert
    assert run.read_bytes(rel) == data
    assert run.exists(rel, verify=True)
    assert run.list() == [rel.removeprefix("./")]


def test_crash_during_replace_keeps_previous_version(
    run: RunDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: a stored v1, then os.replace fails for the data file only (manifest writes work)
    run.write_tensors("train/movie.safetensors", {"w": torch.ones(3)})
    real_replace = __import__("os").replace

    def failing_replace(src: str, dst: str) -> None:
        if str(dst).endswith("movie.safetensors"):
            raise OSError("disk vanished")
        real_replace(src, dst)

    monkeypatch.setattr("os.replace", failing_replace)
    # Execute
    with pytest.raises(OSError, match="disk vanished"):
        run.write_tensors("train/movie.safetensors", {"w": torch.zeros(3)})
    monkeypatch.undo()
    # Assert: v1 readable, no temp files, no pending entry
    got, _ = run.read_tensors("train/movie.safetensors")
    assert torch.equal(got["w"], torch.ones(3))
    assert sorted(p.name for p in (run.root / "train").iterdir()) == ["movie.safetensors"]
    assert (
        "pending"
        not in json.loads((run.root / "manifest.json").read_text())["train/movie.safetensors"]
    )


def test_crash_on_first_write_leaves_nothing(run: RunDir, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare
    real_replace = __import__("os").replace

    def failing_replace(src: str, dst: str) -> None:
        if str(dst).endswith("movie.json"):
            raise OSError("power cut")
        real_replace(src, dst)

    monkeypatch.setattr("os.replace", failing_replace)
    # Execute
    with pytest.raises(OSError):
        run.write_json("eval/movie.json", {"accuracy": 0.9})
    monkeypatch.undo()
    # Assert
    assert not run.exists("eval/movie.json")
    assert run.list() == []
    assert json.loads((run.root / "manifest.json").read_text()) == {}
    assert list((run.root / "eval").iterdir()) == []


def test_crash_before_commit_leaves_new_version_readable_and_recovered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: the data file is replaced, then the process dies before the manifest commit
    run = RunDir(tmp_path / "run")
    run.write_json("eval/movie.json", {"v": 1})
    from medusa_fed.rundir.manifest import Manifest

    real_save = Manifest.save
    calls = {"n": 0}

    def dying_save(self: Manifest, entries: dict) -> None:
        calls["n"] += 1
        if calls["n"] == 2:  # 1 = pending record, 2 = commit
            raise SystemExit("killed")
        real_save(self, entries)

    monkeypatch.setattr(Manifest, "save", dying_save)
    with pytest.raises(SystemExit):
        run.write_json("eval/movie.json", {"v": 2})
    monkeypatch.undo()
    # Execute
    seen_before_recovery = run.read_json("eval/movie.json")
    reopened = RunDir(tmp_path / "run")
    # Assert
    assert seen_before_recovery == {"v": 2}
    entry = json.loads((tmp_path / "run/manifest.json").read_text())["eval/movie.json"]
    assert "pending" not in entry
    assert reopened.read_json("eval/movie.json") == {"v": 2}


def test_tampering_is_detected(run: RunDir) -> None:
    # Prepare
    sha = run.write_tensors("ownership.safetensors", {"owner": torch.zeros(10, dtype=torch.int16)})
    path = run.root / "ownership.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # same size, different content
    path.write_bytes(bytes(data))
    found = hashlib.sha256(bytes(data)).hexdigest()
    # Execute
    with pytest.raises(StoreError) as err:
        run.read_tensors("ownership.safetensors")
    # Assert
    msg = str(err.value)
    assert "ownership.safetensors" in msg and sha in msg and found in msg
    assert "delete it" in msg.lower()
    assert run.exists("ownership.safetensors")  # size still matches
    assert not run.exists("ownership.safetensors", verify=True)


def test_missing_file_messages(run: RunDir) -> None:
    # Prepare
    run.write_json("eval/news.json", {"accuracy": 0.5})
    (run.root / "eval/news.json").unlink()
    # Execute
    with pytest.raises(StoreError) as never_written:
        run.read_json("eval/movie.json")
    with pytest.raises(StoreError) as deleted:
        run.read_json("eval/news.json")
    # Assert
    assert "eval/movie.json" in str(never_written.value)
    assert "not written yet" in str(never_written.value)
    assert "eval/news.json" in str(deleted.value) and "missing" in str(deleted.value)
    assert not run.exists("eval/news.json")


def test_truncated_file_does_not_exist(run: RunDir) -> None:
    # Prepare
    run.write_bytes("blob.bin", b"0123456789")
    (run.root / "blob.bin").write_bytes(b"01234")
    # Execute / Assert
    assert not run.exists("blob.bin")


def test_list_by_prefix_and_remove(run: RunDir) -> None:
    # Prepare
    for team in ("sms", "movie", "news"):
        run.write_json(f"hello/{team}.json", {"team": team})
    run.write_json("config.json", {})
    # Execute
    listed = run.list("hello/")
    run.remove("hello/sms.json")
    # Assert
    assert listed == ["hello/movie.json", "hello/news.json", "hello/sms.json"]
    assert run.list("hello/") == ["hello/movie.json", "hello/news.json"]
    assert not (run.root / "hello/sms.json").exists()


def test_rejections_are_recorded_and_listed(run: RunDir) -> None:
    # Execute
    run.record_rejection("legal", "train", "1,204 values for 1,198 owned elements")
    run.record_rejection("movie", "probe", "values contain NaN")
    run.record_rejection("legal", "train", "fingerprint mismatch")
    records = run.rejections()
    # Assert
    assert [(r["team"], r["stage"], r["reason"]) for r in records] == [
        ("legal", "train", "1,204 values for 1,198 owned elements"),
        ("movie", "probe", "values contain NaN"),
        ("legal", "train", "fingerprint mismatch"),
    ]
    assert run.list("log/rejected/") == [
        "log/rejected/legal-train.json",
        "log/rejected/movie-probe.json",
    ]
    assert all(r["at"] for r in records)


@pytest.mark.parametrize("bad", ["../x.json", "/etc/x.json", "manifest.json", "a\\b", "", ".tmp-x"])
def test_bad_relpaths_are_refused(run: RunDir, bad: str) -> None:
    # Execute / Assert
    with pytest.raises(StoreError):
        run.write_json(bad, {})


def test_bad_team_name_is_refused(run: RunDir) -> None:
    with pytest.raises(StoreError, match="team name"):
        run.record_rejection("../evil", "train", "x")


def test_non_finite_json_is_refused_and_nothing_written(run: RunDir) -> None:
    # Execute
    with pytest.raises(StoreError, match="strict-JSON"):
        run.write_json("eval/movie.json", {"accuracy": float("nan")})
    # Assert
    assert not (run.root / "eval/movie.json").exists()


def test_reader_cannot_write_and_needs_a_directory(run: RunDir, tmp_path: Path) -> None:
    # Prepare
    reader = RunDir(run.root, readonly=True)
    # Execute / Assert
    with pytest.raises(StoreError, match="reader"):
        reader.write_json("x.json", {})
    with pytest.raises(StoreError, match="expected a run directory"):
        RunDir(tmp_path / "nope", readonly=True)


def test_paths(run: RunDir) -> None:
    # Execute / Assert
    assert run.path == run.root
    assert (
        run.file_path("merged/medusa/model.safetensors")
        == run.root / "merged/medusa/model.safetensors"
    )
    with pytest.raises(StoreError):
        run.file_path("../outside")


def test_record_file_adopts_a_file_written_elsewhere(run: RunDir) -> None:
    # Prepare: e.g. save_pretrained writing into merged/<method>/
    target = run.file_path("merged/medusa/config.json")
    target.parent.mkdir(parents=True)
    target.write_text('{"hidden_size": 32}')
    # Execute
    before = run.exists("merged/medusa/config.json")
    run.record_file("merged/medusa/config.json")
    # Assert
    assert not before
    assert run.read_json("merged/medusa/config.json") == {"hidden_size": 32}


def test_identical_tensors_give_identical_files_in_every_process(tmp_path: Path) -> None:
    """safetensors orders metadata keys differently per process; our files must not."""
    import subprocess
    import sys

    # Prepare
    script = (
        "import sys, torch; from medusa_fed.rundir import RunDir; "
        "RunDir(sys.argv[1]).write_tensors('x.safetensors', {'a': torch.ones(3)}, "
        "metadata={'method': 'ties', 'fingerprint': 'f', 'params': '{}', 'z': '1'})"
    )
    # Execute: three processes, three hash seeds
    for i in range(3):
        subprocess.run([sys.executable, "-c", script, str(tmp_path / f"r{i}")], check=True)
    # Assert
    files = {(tmp_path / f"r{i}" / "x.safetensors").read_bytes() for i in range(3)}
    assert len(files) == 1
    tensors, meta = RunDir(tmp_path / "r0", readonly=True).read_tensors("x.safetensors")
    assert list(meta) == sorted(meta) and torch.equal(tensors["a"], torch.ones(3))
