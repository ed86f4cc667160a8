"""The streamed merge (lazy safetensors in, shards out) gives the in-memory merge's values bit for
bit for every method, holds at most two of a tensor's branch deltas at once, and leaves nothing
behind when it fails."""

from __future__ import annotations

import json
import weakref
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from medusa_fed.errors import MergeError
from medusa_fed.merging import METHODS, OWNERSHIP_METHODS, MergeSpec, merge_states
from medusa_fed.merging.shards import INDEX, SafetensorsFile, ShardedTensors, ShardWriter
from medusa_fed.merging.streaming import LazyDeltas, merge_to_folder

SHAPES = {"a.weight": (64, 48), "b.bias": (48,), "emb.weight": (300, 16), "c.weight": (33, 7)}


def _inputs(method: str, uncontrolled: bool) -> tuple[dict, dict]:
    """Seeded base (one bf16 tensor among fp32) and three branch deltas (disjoint for the
    ownership methods)."""
    g = torch.Generator().manual_seed(len(method))
    base = {n: torch.randn(s, generator=g) for n, s in SHAPES.items()}
    base["half.weight"] = torch.randn(40, 12, generator=g).to(torch.bfloat16)
    owners = {n: torch.randint(0, 3, t.shape, generator=g) for n, t in base.items()}
    deltas: dict[str, dict[str, torch.Tensor]] = {}
    for i in range(3):
        deltas[f"t{i}"] = {}
        for n, t in base.items():
            d = torch.randn(t.shape, generator=g) * 0.01
            d[torch.rand(t.shape, generator=g) < 0.1] = 0
            owned = method in OWNERSHIP_METHODS
            deltas[f"t{i}"][n] = torch.where(owners[n] == i, d, 0.0) if owned else d
    del deltas["t2"]["c.weight"]  # a branch that omits a tensor
    if uncontrolled:
        deltas["u"] = {n: torch.randn(t.shape, generator=g) * 0.01 for n, t in base.items()}
    return base, deltas


def _read_folder(out: Path) -> dict[str, torch.Tensor]:
    """What a standard reader finds: every shard the index names, or the single file."""
    if (out / INDEX).exists():
        weight_map = json.loads((out / INDEX).read_text())["weight_map"]
        files = sorted(set(weight_map.values()))
    else:
        files = ["model.safetensors"]
    merged: dict[str, torch.Tensor] = {}
    for f in files:
        merged.update(load_file(str(out / f)))
    return merged


@pytest.mark.parametrize(
    ("method", "uncontrolled"), [(m, False) for m in METHODS] + [("medusa", True)]
)
def test_streamed_merge_equals_in_memory_merge_bit_for_bit(tmp_path, method, uncontrolled):
    # Prepare: the same inputs in memory and as safetensors files
    base, deltas = _inputs(method, uncontrolled)
    save_file(base, str(tmp_path / "base.safetensors"))
    for b, d in deltas.items():
        save_file(d, str(tmp_path / f"{b}.safetensors"))
    unc = ["u"] if uncontrolled else []
    spec = MergeSpec(method)
    # Execute
    expected = merge_states(base, deltas, spec, uncontrolled=unc)
    lazy = {b: SafetensorsFile(tmp_path / f"{b}.safetensors") for b in deltas}
    report = merge_to_folder(
        SafetensorsFile(tmp_path / "base.safetensors"),
        lazy,
        spec,
        tmp_path / "out",
        uncontrolled=unc,
        max_shard_bytes=8_000,  # several shards
    )
    # Assert: same keys, dtypes and bits; shards and index as Hugging Face writes them
    found = _read_folder(tmp_path / "out")
    assert found.keys() == expected.keys()
    for n in expected:
        assert found[n].dtype == expected[n].dtype, n
        assert torch.equal(found[n], expected[n]), n
    assert (tmp_path / "out" / INDEX).exists()
    assert report["totals"]["numel"] == sum(t.numel() for t in base.values())
    assert not list((tmp_path / "out").glob(".tmp-*"))


class _Counting(Mapping[str, torch.Tensor]):
    """A lazy branch that records how many tensors it handed out are still alive."""

    live: list[weakref.ref] = []
    peak = 0

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self._tensors = tensors

    def __getitem__(self, name: str) -> torch.Tensor:
        alive = [r for r in _Counting.live if r() is not None]
        _Counting.peak = max(_Counting.peak, len(alive) + 1)
        out = self._tensors[name].clone()
        _Counting.live = [*alive, weakref.ref(out)]
        return out

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)


@pytest.mark.parametrize("method", ["medusa", "task_arithmetic", "ties"])
def test_streamed_merge_holds_at_most_two_branch_deltas(tmp_path, method):
    base, deltas = _inputs(method, uncontrolled=False)
    deltas["t3"] = {n: torch.zeros_like(t, dtype=torch.float32) for n, t in base.items()}
    _Counting.live, _Counting.peak = [], 0
    lazy = {b: _Counting(d) for b, d in deltas.items()}
    merge_to_folder(base, lazy, MergeSpec(method), tmp_path)
    assert 1 <= _Counting.peak <= 2  # the delta in use and the next one being read, of 4


def test_a_non_finite_merge_leaves_no_file_behind(tmp_path):
    base, deltas = _inputs("task_arithmetic", uncontrolled=False)
    deltas["t1"]["emb.weight"] = torch.full((300, 16), 3e38)
    deltas["t0"]["emb.weight"] = torch.full((300, 16), 3e38)
    with pytest.raises(MergeError, match=r"expected finite merged weights, found 4,800 inf/NaN"):
        merge_to_folder(base, deltas, MergeSpec("task_arithmetic"), tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_lazy_deltas_are_tuned_minus_base_and_name_what_is_missing(tmp_path):
    base = {"w": torch.randn(4, 3), "ids": torch.arange(3)}
    tuned = {"w": base["w"] + 1.5, "ids": torch.arange(3)}
    d = LazyDeltas(tuned, base)
    assert list(d) == ["w"]
    assert torch.equal(d["w"], tuned["w"] - base["w"])
    with pytest.raises(MergeError, match=r"found 1 missing \(e.g. \['w'\]\)"):
        LazyDeltas({"ids": torch.arange(3)}, base)


def test_shard_writer_refuses_what_was_not_planned_and_what_never_came(tmp_path):
    layout = {"a": ((2, 3), torch.float32), "b": ((4,), torch.bfloat16)}
    writer = ShardWriter(tmp_path, layout)
    with pytest.raises(MergeError, match=r"a: expected shape \(2, 3\) and dtype torch.float32"):
        writer.write("a", torch.zeros(3, 2))
    with pytest.raises(MergeError, match="expected one of the planned tensors"):
        writer.write("c", torch.zeros(1))
    writer.write("a", torch.ones(2, 3))
    with pytest.raises(MergeError, match="written twice"):
        writer.write("a", torch.ones(2, 3))
    with pytest.raises(MergeError, match=r"1 planned tensor\(s\) were never written"):
        writer.finish()
    assert list(tmp_path.iterdir()) == []


def test_reader_reads_what_safetensors_wrote_and_names_a_truncated_file(tmp_path):
    tensors = {"x": torch.randn(5, 7), "y": torch.arange(6).to(torch.int16), "z": torch.ones(())}
    save_file(tensors, str(tmp_path / "m.safetensors"))
    read = ShardedTensors(tmp_path)
    assert read.layout()["x"] == ((5, 7), torch.float32)
    assert all(torch.equal(read[n], t) for n, t in tensors.items())
    data = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "m.safetensors").write_bytes(data[:-8])
    with pytest.raises(MergeError, match="expected a dtype among .* offsets inside the data"):
        SafetensorsFile(tmp_path / "m.safetensors")
    (tmp_path / "m.safetensors").write_bytes(b"\xff" * 16)
    with pytest.raises(MergeError, match="expected a safetensors file, found one that cannot"):
        SafetensorsFile(tmp_path / "m.safetensors")


def test_folder_merge_streams_into_loadable_shards(tmp_path):
    """`medusa merge --config` over model folders: HF shards that `from_pretrained` loads, with
    the in-memory merge's values."""
    from transformers import AutoModelForCausalLM

    from medusa_fed.merging.mergekit import FolderMerge, merge_folders, read_weights
    from medusa_fed.training.tiny_models import write_tiny_model

    # Prepare: a tiny Llama and two perturbed copies
    base = write_tiny_model(tmp_path / "base", "llama")
    tuned = []
    for i in range(2):
        model = AutoModelForCausalLM.from_pretrained(base)
        g = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.01)
        model.save_pretrained(tmp_path / f"team{i}")
        tuned.append(tmp_path / f"team{i}")
    job = FolderMerge(base, tuple(tuned), MergeSpec("ties", density=0.5), None)
    # Execute
    merge_folders(job, tmp_path / "out", max_shard_bytes=20_000)
    # Assert
    start = read_weights(base)
    deltas = {
        f"model{i:03d}": {n: read_weights(t)[n] - start[n] for n in start}
        for i, t in enumerate(tuned)
    }
    expected = merge_states(start, deltas, job.spec)
    found = _read_folder(tmp_path / "out")
    assert len(json.loads((tmp_path / "out" / INDEX).read_text())["weight_map"]) == len(start)
    assert all(torch.equal(found[n], expected[n]) for n in expected)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").state_dict()
    assert torch.equal(loaded["model.norm.weight"], expected["model.norm.weight"])


# SHA-256 of every merged tensor's bytes (sorted by name) from _golden_inputs, as the merge code
# computed them before the streaming change (commit 97002bc). Spectral methods (an SVD, whose
# last bits depend on the LAPACK build) are covered by the streamed-vs-in-memory test above.
BEFORE = {
    "medusa": "1647b591060fd82b9674a852ecf6c0c018022d75299dc3ba2a591c42caf0f36f",
    "medusa+unc": "03de91dd2557787e2050a224817bb62e9abff6f7201ca58014c1ebe0b302351e",
    "linear": "b5892e930de6bf173f1f4400cf18abe9c5df736874a3f86ecef8972aa35bc966",
    "task_arithmetic": "7ff3015fa1880e76c9d76fad789f1cf02511f54f40bef5c31a3005e61c027047",
    "ties": "59d74fdd135d58427511b17b42001e99f8e63297c805f591c86d8a7b0b5cdbe4",
    "dare_linear": "dff22b737366a7c80c60f3038fe76f3e735614a7db3469483efd283d3df883da",
    "dare_task_arithmetic": "379c9c1db09dc825085119a518d0150897b90f6ca007350923c17f170b1ff766",
    "dare_ties": "940e49b17bbd6941b29a1522eb01af94acb661fc58a51dd13f4e16f8852a91d5",
}


def _golden_merges() -> dict[str, str]:
    """Every elementwise method on one seeded draw, in one fixed order (the draw is shared)."""
    import hashlib

    g = torch.Generator().manual_seed(0)
    base = {n: torch.randn(s, generator=g) for n, s in SHAPES.items()}
    base["half"] = torch.randn(40, 12, generator=g).to(torch.bfloat16)
    found = {}
    for method in METHODS:
        for unc in ([], ["u"]):
            if method != "medusa" and unc:
                continue
            owners = {n: torch.randint(0, 3, t.shape, generator=g) for n, t in base.items()}
            deltas: dict[str, dict[str, torch.Tensor]] = {}
            for i, b in enumerate(["t0", "t1", "t2"]):
                deltas[b] = {}
                for n, t in base.items():
                    d = torch.randn(t.shape, generator=g) * 0.01
                    d[torch.rand(t.shape, generator=g) < 0.1] = 0
                    owned = method in OWNERSHIP_METHODS
                    deltas[b][n] = torch.where(owners[n] == i, d, 0.0) if owned else d
            if unc:
                deltas["u"] = {n: torch.randn(t.shape, generator=g) * 0.01 for n, t in base.items()}
            merged = merge_states(base, deltas, MergeSpec(method), uncontrolled=unc)
            h = hashlib.sha256()
            for n in sorted(merged):
                h.update(merged[n].contiguous().view(-1).view(torch.uint8).numpy().tobytes())
            found[f"{method}{'+unc' if unc else ''}"] = h.hexdigest()
    return found


def test_merges_are_bit_identical_to_the_code_before_streaming():
    found = _golden_merges()
    assert {m: found[m] for m in BEFORE} == BEFORE


def _write(
    tmp_path: Path, tensors: dict[str, dict[str, torch.Tensor]]
) -> dict[str, SafetensorsFile]:
    for b, d in tensors.items():
        save_file(d, str(tmp_path / f"{b}.safetensors"))
    return {b: SafetensorsFile(tmp_path / f"{b}.safetensors") for b in tensors}


def test_medusa_merge_of_files_names_a_nan_branch_and_an_overlap(tmp_path):
    # Prepare: the disjoint sum checks one sum instead of each branch, then names the culprit
    base = {"w": torch.zeros(6)}
    nan = {"a": {"w": torch.tensor([1.0, 0, 0, 0, 0, 0])}, "b": {"w": torch.zeros(6)}}
    nan["b"]["w"][4] = float("nan")
    both = {"a": {"w": torch.tensor([1.0, 2.0, 0, 0, 0, 0])}, "c": {"w": torch.zeros(6)}}
    both["c"]["w"][1] = -2.0  # a and c changed element 1: the sum there cancels to 0
    files_base = _write(tmp_path, {"base": base})["base"]
    # Execute / Assert
    with pytest.raises(MergeError, match=r"w: branch 'b' sent 1 NaN/Inf delta value"):
        merge_to_folder(files_base, _write(tmp_path, nan), MergeSpec("medusa"), tmp_path / "o")
    with pytest.raises(MergeError, match=r"w: controlled branches 'a' and 'c' both changed 1 "):
        merge_to_folder(files_base, _write(tmp_path, both), MergeSpec("medusa"), tmp_path / "o")
    assert not list((tmp_path / "o").glob("*"))  # nothing written, nothing left half-written


def test_medusa_merge_of_finite_branches_that_overflow_blames_the_merge_not_a_branch(tmp_path):
    # Prepare: two owners of different elements, then a scale that overflows fp32
    base = {"w": torch.zeros(2)}
    deltas = {"a": {"w": torch.tensor([3e38, 0.0])}, "b": {"w": torch.tensor([0.0, -3e38])}}
    # Execute / Assert
    with pytest.raises(MergeError, match=r"expected finite merged weights, found 2 inf/NaN"):
        merge_to_folder(
            base, _write(tmp_path, deltas), MergeSpec("medusa", scale=2.0), tmp_path / "o"
        )


@pytest.mark.parametrize("method", ["medusa", "ties", "dare_ties", "task_arithmetic", "linear"])
def test_merge_leaves_in_memory_deltas_as_they_were(method):
    # Prepare: merges work in place only on tensors they read or converted themselves; the
    # TIES trim (density 0.2 keeps 1 of 4) and DARE drop change branch a's -0.5
    base = {"w": torch.zeros(4), "h": torch.zeros(4, dtype=torch.bfloat16)}
    deltas = {
        "a": {"w": torch.tensor([1.0, 0, 0, -0.5]), "h": torch.tensor([0.5, 0, 0, 0])},
        "b": {"w": torch.tensor([0, 2.0, 0, 0]), "h": torch.tensor([0, 0.25, 0, 0])},
    }
    deltas["a"]["w"] = torch.nn.Parameter(deltas["a"]["w"])  # detached, it shares storage
    before = {b: {n: t.detach().clone() for n, t in d.items()} for b, d in deltas.items()}
    # Execute
    merged = merge_states(base, deltas, MergeSpec(method))
    # Assert
    if method == "medusa":
        assert merged["w"].tolist() == [1.0, 2.0, 0.0, -0.5]
        assert merged["h"].tolist() == [0.5, 0.25, 0.0, 0.0]
    for b, d in deltas.items():
        for n, t in d.items():
            assert torch.equal(t, before[b][n]), (b, n)


def test_membership_reads_the_header_not_the_tensor(tmp_path, monkeypatch):
    # Prepare
    save_file({"w": torch.zeros(8)}, str(tmp_path / "m.safetensors"))
    f, sharded = (
        SafetensorsFile(tmp_path / "m.safetensors"),
        ShardedTensors(tmp_path / "m.safetensors"),
    )
    lazy = LazyDeltas(f, f)
    reads: list[int] = []
    real = __import__("os").preadv
    monkeypatch.setattr("os.preadv", lambda *a: reads.append(1) or real(*a))
    # Execute / Assert
    assert "w" in f and "w" in sharded and "w" in lazy
    assert "x" not in f and "x" not in sharded and "x" not in lazy
    assert reads == []
    assert float(f["w"].sum()) == 0.0 and reads == [1]  # a read does go through the patched call
