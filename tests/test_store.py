"""The branch store end to end on a tiny BERT: a run made by ``medusa simulate`` imports itself,
``medusa merge`` re-merges its branches bit for bit, exports load with ``from_pretrained``, a new
team joins after the merge, and a crash in the middle of an import leaves the store readable.

One in-process simulation (about 20 s on 2 cores) is shared by the module.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification
from typer.testing import CliRunner

from medusa_fed.cli import app
from medusa_fed.history import objects as store_objects
from medusa_fed.history.branches import Store
from medusa_fed.history.describe import ownership_of
from medusa_fed.history.importer import import_run
from medusa_fed.history.join import join_after_merge
from medusa_fed.history.values import delta_of, values_of
from medusa_fed.ownership.ownership_map import NO_OWNER
from medusa_fed.rundir.run_dir import RunDir
from medusa_fed.training.config import ModelSpec, TrainConfig
from medusa_fed.training.data import TaskSpec, load_task
from medusa_fed.training.tiny_models import WORDS

runner = CliRunner()


def cli(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


@pytest.fixture(scope="module")
def run(tiny_bert, tiny_tasks, tmp_path_factory):  # type: ignore[no-untyped-def]
    """``medusa simulate --out <tmp>/runs/x --store <tmp>/runs/.medusa-store`` (in-process)."""
    out = tmp_path_factory.mktemp("store-run") / "runs" / "x"
    teams = ",".join(f"{n}={p}" for n, p in sorted(tiny_tasks.items()))
    cli(
        "simulate",
        "--teams",
        teams,
        "--model",
        str(tiny_bert),
        "--backend",
        "inprocess",
        "--compare",
        "ties",
        "--unselected",
        "frozen",
        "--out",
        str(out),
        "--epochs",
        "1",
        "--probe-epochs",
        "1",
        "--no-warm-start",  # a one-epoch budget: the probe would use it all
        "--max-train",
        "40",
        "--max-eval",
        "20",
        "--max-length",
        "16",
        "--batch-size",
        "8",
        "--lr",
        "0.003",
        "--no-eval-before",
        "--store",
        str(out.parent / ".medusa-store"),
    )
    return out, out.parent / ".medusa-store"


def test_run_imports_itself_and_a_reimport_changes_nothing(run) -> None:  # type: ignore[no-untyped-def]
    out, store_dir = run
    with Store(store_dir) as store:
        kinds = [r.kind for r in store.db.objects()]
        assert sorted(kinds) == sorted(
            ["base", "run", "ownership"] + ["branch"] * 6 + ["merge"] * 2
        )
        again = import_run(out, store)
        assert len(store.db.objects()) == len(kinds)
        rd = RunDir(out, readonly=True)
        # round trips: deltas, heads and the ownership map come back bit for bit
        for stage in ("train", "baseline"):
            for team in ("alpha", "beta", "gamma"):
                row = store.get(again.branches[f"{stage}/{team}"])
                expected, _ = rd.read_tensors(f"{stage}/{team}.safetensors")
                got = delta_of(store, row)
                assert all(torch.equal(got[n], expected[n]) for n in expected)
                head, _ = rd.read_tensors(f"{stage}/{team}.head.safetensors")
                got_head = store.blobs.get_tensors(row.meta["blobs"]["head"])
                assert all(torch.equal(got_head[n], head[n]) for n in head)
                assert row.meta["data"]["labels"] == ["neg", "pos"]
        own = ownership_of(store, store.get(again.ownership))
        assert own.teams == ("alpha", "beta", "gamma")
        assert store.get(again.run).meta["status"] == "complete"
        assert store.verify() == [] and store.orphans() == []


def test_log_shows_the_runs_history(run) -> None:  # type: ignore[no-untyped-def]
    out, store_dir = run
    text = cli("log", "--store", str(store_dir))
    assert text.startswith("base ")
    assert "run " in text and str(out) in text and "complete" in text
    assert len(re.findall(r"branch [0-9a-f]{8}  \w+  masked/full", text)) == 3
    assert len(re.findall(r"branch [0-9a-f]{8}  \w+  free/full", text)) == 3
    assert "merge " in text and "  medusa  <- alpha" in text and "  ties  <- alpha" in text
    assert "conflicts 0 (0.0%)" in text  # the medusa merge


def test_medusa_merge_re_merges_the_run_bit_for_bit(run, tmp_path) -> None:  # type: ignore[no-untyped-def]
    out, store_dir = run
    rd = RunDir(out, readonly=True)
    for stage, method in (("baseline", "ties"), ("train", "medusa")):
        text = cli(
            "merge",
            f"latest:{stage}",
            "--method",
            method,
            "-o",
            str(tmp_path / method),
            "--store",
            str(store_dir),
        )
        merge_id = re.search(r"merge ([0-9a-f]{8})", text).group(1)  # type: ignore[union-attr]
        assert "identical to a merge already in the store" in text  # the run's own merge
        expected, _ = rd.read_tensors(f"merged/{method}/shared.safetensors")
        with Store(store_dir, readonly=True) as store:
            got = values_of(store, store.resolve(merge_id))
        assert set(got) == set(expected)
        for name in expected:
            assert torch.equal(got[name], expected[name]), (method, name)
        model = AutoModelForSequenceClassification.from_pretrained(tmp_path / method)
        assert model.config.id2label == {0: "neg", 1: "pos"}
        state = model.state_dict()
        for name in expected:
            assert torch.equal(state[f"bert.{name}"], expected[name]), name


def test_merge_from_ids_and_yaml_with_another_method(run, tmp_path) -> None:  # type: ignore[no-untyped-def]
    _, store_dir = run
    with Store(store_dir, readonly=True) as store:
        runs = store.db.objects("run")
        ids = [
            i
            for k, i in sorted(runs[-1].meta["objects"]["branches"].items())
            if k.startswith("baseline/")
        ]
    text = cli(
        "merge",
        *[i[:8] for i in ids],
        "--method",
        "dare_linear",
        "--drop-rate",
        "0.5",
        "--store",
        str(store_dir),
    )
    assert "recorded in" in text
    config = tmp_path / "merge.yml"
    config.write_text(
        "merge_method: dare_linear\nparameters: {drop_rate: 0.5}\nmodels:\n"
        + "".join(f"  - model: {i[:10]}\n" for i in ids)
        + "head: beta\n"
    )
    text = cli(
        "merge", "--config", str(config), "-o", str(tmp_path / "yml"), "--store", str(store_dir)
    )
    assert "identical to a merge already in the store" in text  # DARE drops are seeded
    assert (tmp_path / "yml" / "medusa.json").is_file()
    assert "dare_linear:drop_rate=0.5" in cli("log", "--store", str(store_dir))
    # a merge whose weights overflow is refused in one line, and nothing is recorded
    before = cli("log", "--store", str(store_dir))
    args = ["--method", "task_arithmetic", "--scale", "1e39", "--store", str(store_dir)]
    result = runner.invoke(app, ["merge", *[i[:8] for i in ids], *args])
    assert result.exit_code != 0 and "expected finite merged weights" in result.output
    lines = [x for x in result.output.replace("\r", "\n").splitlines() if x and "merge (" not in x]
    assert "Traceback" not in result.output and len(lines) == 1, lines  # (the bar aside)
    assert cli("log", "--store", str(store_dir)) == before


def test_show_and_diff(run) -> None:  # type: ignore[no-untyped-def]
    out, store_dir = run
    with Store(store_dir, readonly=True) as store:
        merges = {r.name: r for r in store.db.objects("merge")}
        own = store.db.objects("ownership")[0]
    text = cli("show", merges["ties"].id[:8], "--store", str(store_dir))
    assert "changed elements per layer and conflicts (overlap):" in text
    assert re.search(r"encoder\.layer\.0\s+8,544", text)
    assert "metrics   alpha: accuracy=" in text
    text = cli("show", merges["medusa"].id[:8], "--store", str(store_dir))
    assert "ownership share per layer" in text and "unowned" in text
    assert "conflicts 0 elements" in text
    assert "encoder.layer.1" in cli("show", own.id[:6], "--store", str(store_dir))
    text = cli("diff", merges["ties"].id[:8], merges["medusa"].id[:8], "--store", str(store_dir))
    rd = RunDir(out, readonly=True)
    a, _ = rd.read_tensors("merged/ties/shared.safetensors")
    b, _ = rd.read_tensors("merged/medusa/shared.safetensors")
    differing = sum(int((a[n] != b[n]).sum()) for n in a)
    assert f"{differing:,} of {sum(t.numel() for t in a.values()):,} elements" in text


def test_export_a_branch_loads_with_from_pretrained(run, tmp_path) -> None:  # type: ignore[no-untyped-def]
    _, store_dir = run
    with Store(store_dir, readonly=True) as store:
        branch = next(
            r
            for r in store.db.objects("branch")
            if r.name == "gamma" and r.meta["training"] == "masked"
        )
        expected = values_of(store, branch)
    cli("export", branch.id[:8], "-o", str(tmp_path / "gamma"), "--store", str(store_dir))
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "gamma")
    state = model.state_dict()
    assert all(torch.equal(state[f"bert.{n}"], t) for n, t in expected.items())
    # a model already there is not overwritten without --force; a file is not a folder
    before = (tmp_path / "gamma/config.json").stat().st_mtime_ns
    args = ["export", branch.id[:8], "--store", str(store_dir), "-o"]
    again = runner.invoke(app, [*args, str(tmp_path / "gamma")])
    assert again.exit_code != 0 and "Pass --force" in again.output
    assert (tmp_path / "gamma/config.json").stat().st_mtime_ns == before
    (tmp_path / "file").write_text("x")
    onto_file = runner.invoke(app, [*args, str(tmp_path / "file")])
    assert onto_file.exit_code != 0 and "found a file" in onto_file.output
    assert "Traceback" not in again.output + onto_file.output
    cli(*args, str(tmp_path / "gamma"), "--force")


def _write_task(path: Path) -> Path:
    rng = random.Random(7)
    rows = ["text,label"]
    for i in range(80):
        cue = ("best", "fun", "love") if i % 2 else ("worst", "poor", "sad")
        words = [rng.choice(cue) for _ in range(3)] + [rng.choice(WORDS) for _ in range(3)]
        rows.append(" ".join(words) + ("," + ("yes" if i % 2 else "no")))
    path.write_text("\n".join(rows) + "\n")
    return path


def test_new_team_joins_after_the_merge_on_free_elements(run, tmp_path) -> None:  # type: ignore[no-untyped-def]
    _, store_dir = run
    data = load_task(TaskSpec(source=str(_write_task(tmp_path / "delta.csv")), max_test=20))
    cfg = TrainConfig(epochs=1, lr=3e-3, batch_size=8, max_length=16)
    with Store(store_dir) as store:
        medusa = next(r for r in store.db.objects("merge") if r.name == "medusa")
        result = join_after_merge(store, medusa.id[:8], "delta", data, cfg)
        old_map = ownership_of(
            store,
            store.get(store.get(next(iter(medusa.meta["inputs"].values()))).meta["ownership"]),
        )
        new_map = ownership_of(store, store.get(result.ownership))
        free = {n: o == NO_OWNER for n, o in old_map.owners.items()}
        assert all(torch.equal(new_map.mask("delta")[n], free[n]) for n in free)
        delta = delta_of(store, store.get(result.branch))
        before = values_of(store, medusa)
        after = values_of(store, store.get(result.merge))
        for name in free:
            assert not bool(delta[name][~free[name]].any()), name  # only its own elements
            assert torch.equal(after[name][~free[name]], before[name][~free[name]])
            assert torch.equal(after[name], before[name] + delta[name]), name
        assert sum(int((d != 0).sum()) for d in delta.values()) > 0
        assert store.get(result.branch).meta["data"]["labels"] == ["no", "yes"]
    text = cli("log", "--store", str(store_dir))
    lines = text.splitlines()
    parent = next(i for i, line in enumerate(lines) if f"merge {medusa.short}" in line)
    indent = len(lines[parent]) - len(lines[parent].lstrip("│ ├└─"))
    joined = [
        line
        for line in lines[parent + 1 :]
        if result.branch[:8] in line or result.merge[:8] in line
    ]
    assert len(joined) == 2 and all(len(j) - len(j.lstrip("│ ├└─")) > indent for j in joined)
    assert "owns " in joined[0] and "delta" in joined[0]
    exported = tmp_path / "joined"
    cli("export", result.merge[:8], "-o", str(exported), "--store", str(store_dir))
    model = AutoModelForSequenceClassification.from_pretrained(exported)
    assert model.config.id2label == {0: "no", 1: "yes"}


def test_crash_in_the_middle_of_an_import_leaves_the_store_readable(
    run, tmp_path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    out, _ = run
    store_dir = tmp_path / "store"
    calls = {"n": 0}
    real = store_objects.add_merge

    def crash_on_second_merge(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 2:  # the result blob of the first merge is written; this one crashes
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr("medusa_fed.history.importer.add_merge", crash_on_second_merge)
    with pytest.raises(KeyboardInterrupt):
        import_run(out, store_dir)
    monkeypatch.undo()
    with Store(store_dir, readonly=True) as store:
        assert len(store.db.objects("merge")) == 1 and len(store.db.objects("branch")) == 6
        assert store.verify() == []
    assert "merge " in cli("log", "--store", str(store_dir))
    result = import_run(out, store_dir)  # importing again completes it
    assert len(result.merges) == 2
    with Store(store_dir, readonly=True) as store:
        assert len(store.db.objects("merge")) == 2 and store.verify() == []


def test_lora_branch_exports_as_a_peft_adapter(tiny_bert, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from peft import PeftModel

    from medusa_fed.training.models import load_base

    base = load_base(ModelSpec(source=str(tiny_bert), method="lora"))
    delta = {n: torch.full_like(t, 0.01) for n, t in base.shared_state().items()}
    head = base.build(2).head_state()
    with Store(tmp_path / "store") as store:
        base_id = store_objects.add_base(
            store, base.fingerprint(), str(tiny_bert), "encoder-classifier", "lora", base.shapes
        )
        branch = store_objects.add_branch(
            store, "alpha", base_id, delta, "free", "lora", head, data={"labels": ["neg", "pos"]}
        )
    out = tmp_path / "adapter"
    cli("export", branch[:8], "-o", str(out), "--store", str(tmp_path / "store"))
    assert (out / "adapter_config.json").is_file()
    task_model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    peft_model = PeftModel.from_pretrained(task_model, out)
    start = base.shared_state()
    lora = {n.replace(".default", ""): p for n, p in peft_model.named_parameters() if "lora_" in n}
    assert set(lora) == set(start)
    assert all(torch.equal(p.detach(), start[n] + 0.01) for n, p in lora.items())


def test_partial_run_imports_what_it_has(run, tmp_path) -> None:  # type: ignore[no-untyped-def]
    out, _ = run
    source = RunDir(out, readonly=True)
    partial = RunDir(tmp_path / "runs" / "crashed")  # a run that stopped after TRAIN
    for rel in [
        "config.json",
        "ownership.safetensors",
        *source.list("hello/"),
        *source.list("train/"),
    ]:
        partial.write_bytes(rel, source.read_bytes(rel))
    result = import_run(partial.path, tmp_path / "store")
    assert result.status == "partial" and result.merges == {}
    assert sorted(result.branches) == ["train/alpha", "train/beta", "train/gamma"]
    assert "partial" in cli("log", "--store", str(tmp_path / "store"))


def test_medusa_merge_sign_elects_an_uncontrolled_branch_like_the_run(tiny_bert, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from medusa_fed.history.remerge import merge_branches
    from medusa_fed.merging import MergeSpec, merge_states
    from medusa_fed.training.models import load_base

    base = load_base(ModelSpec(source=str(tiny_bert)))
    start = base.shared_state()
    g = torch.Generator().manual_seed(0)
    owner = {n: torch.randint(0, 2, t.shape, generator=g) for n, t in start.items()}
    deltas = {
        "alpha": {n: torch.randn(t.shape, generator=g) * (owner[n] == 0) for n, t in start.items()},
        "beta": {n: torch.randn(t.shape, generator=g) * (owner[n] == 1) for n, t in start.items()},
        "gamma": {n: torch.randn(t.shape, generator=g) for n, t in start.items()},
    }
    with Store(tmp_path / "store") as store:
        base_id = store_objects.add_base(
            store, base.fingerprint(), str(tiny_bert), "encoder-classifier", "full", base.shapes
        )
        ids = [
            store_objects.add_branch(
                store, team, base_id, d, "uncontrolled" if team == "gamma" else "masked", "full"
            )
            for team, d in deltas.items()
        ]
        outcome = merge_branches(store, ids, MergeSpec("medusa"), progress=False)
    expected = merge_states(start, deltas, MergeSpec("medusa"), uncontrolled=["gamma"])
    assert all(torch.equal(outcome.values[n], expected[n]) for n in expected)
    assert outcome.report["totals"]["sign_elected"] > 0


def test_a_run_outside_runs_is_found_by_log_without_flags(
    tiny_bert, tiny_tasks, tmp_path, monkeypatch
) -> None:
    """One rule for where the history lives, the same for writing and reading: a run with
    ``--out`` anywhere is imported into ./runs/.medusa-store (or $MEDUSA_STORE), where a plain
    ``medusa log`` looks."""
    # Prepare: a project folder as the current directory, the run directory elsewhere
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(project)
    monkeypatch.delenv("MEDUSA_STORE", raising=False)
    elsewhere = tmp_path / "scratch" / "exp1"
    teams = ",".join(f"{n}={p}" for n, p in sorted(tiny_tasks.items())[:2])
    # Execute
    cli(
        "simulate", "--teams", teams, "--model", str(tiny_bert), "--backend", "inprocess",
        "--out", str(elsewhere), "--epochs", "2", "--rounds", "1", "--refit-epochs", "0",
        "--max-train", "16", "--max-eval", "8", "--max-length", "16", "--batch-size", "8",
        "--no-eval-before",
    )  # fmt: skip
    # Assert: written where a plain `medusa log` reads, and found by it
    assert (project / "runs/.medusa-store").is_dir()
    assert not (tmp_path / "scratch/.medusa-store").exists()
    text = cli("log")
    assert str(elsewhere) in text and "complete" in text
    monkeypatch.setenv("MEDUSA_STORE", str(tmp_path / "env-store"))  # the same rule, moved
    moved = runner.invoke(app, ["log"])
    assert moved.exit_code != 0 and "env-store" in moved.output
