"""load_task on a team's own .csv / .tsv / .jsonl files: columns, pairs, labels, caps, describe."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

from medusa_fed.training.data import Split, TaskData, TaskSpec, describe, load_task


def write_csv(path: Path, header: list[str], rows: list[list[str]], delimiter: str = ",") -> Path:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def labelled(n_per_class: dict[str, int]) -> list[list[str]]:
    return [[f"{lab} text {i}", lab] for lab, n in n_per_class.items() for i in range(n)]


def all_rows(data: TaskData) -> list[tuple[str, int]]:
    return [
        (t, i) for s in data.splits().values() for t, i in zip(s.texts, s.label_ids, strict=True)
    ]


def test_csv_classification_maps_each_text_to_its_label(tmp_path: Path) -> None:
    # Prepare: quoted commas and newlines inside texts, whitespace around texts and labels
    rows = labelled({"neg": 20, "pos": 30}) + [['  "Hi", she said,\nthen left  ', " pos "]]
    path = write_csv(tmp_path / "reviews.csv", ["text", "label"], rows)

    # Execute
    data = load_task(TaskSpec(str(path)))

    # Assert
    assert data.name == "reviews"
    assert data.labels == ("neg", "pos")
    texts = dict(all_rows(data))
    assert len(texts) == 51
    assert texts['"Hi", she said,\nthen left'] == 1
    assert all(data.labels[i] == t.split()[0] for t, i in texts.items() if " text " in t)


def test_split_sizes_are_stratified_and_disjoint(tmp_path: Path) -> None:
    # Prepare
    path = write_csv(tmp_path / "d.csv", ["text", "label"], labelled({"a": 50, "b": 100}))

    # Execute
    data = load_task(TaskSpec(str(path), validation_fraction=0.1, test_fraction=0.2))

    # Assert: per class, round(n*0.2) test and round(n*0.1) validation
    counts = {k: Counter(s.label_ids) for k, s in data.splits().items()}
    assert counts["test"] == {0: 10, 1: 20}
    assert counts["validation"] == {0: 5, 1: 10}
    assert counts["train"] == {0: 35, 1: 70}
    sets = [set(s.texts) for s in data.splits().values()]
    assert sets[0].isdisjoint(sets[1]) and sets[0].isdisjoint(sets[2])
    assert sets[1].isdisjoint(sets[2])


def test_split_is_fixed_for_a_seed_across_platforms(tmp_path: Path) -> None:
    # Prepare: golden values; a change means every team's split silently changed
    path = write_csv(tmp_path / "d.csv", ["text", "label"], labelled({"a": 6, "b": 9}))

    # Execute
    first = load_task(TaskSpec(str(path), seed=7))
    again = load_task(TaskSpec(str(path), seed=7))
    other = load_task(TaskSpec(str(path), seed=8))

    # Assert
    assert first == again
    assert first.test.texts == ("b text 1", "b text 4", "a text 3")
    assert first.validation.texts == ("a text 5", "b text 6")
    assert other.test != first.test


def test_max_caps_subsample_stratified_and_leave_other_splits_alone(tmp_path: Path) -> None:
    # Prepare
    path = write_csv(tmp_path / "d.csv", ["text", "label"], labelled({"a": 100, "b": 300}))
    full = load_task(TaskSpec(str(path)))

    # Execute
    capped = load_task(TaskSpec(str(path), max_train=40, max_test=8))

    # Assert
    assert Counter(capped.train.label_ids) == {0: 10, 1: 30}
    assert Counter(capped.test.label_ids) == {0: 2, 1: 6}
    assert set(capped.train.texts) <= set(full.train.texts)
    assert capped.validation == full.validation


def test_tsv_keeps_quotes_as_text(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "d.tsv"
    lines = ["label\ttext"] + [f'{"spam" if i % 3 else "ham"}\t"quoted {i}' for i in range(30)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    # Execute
    data = load_task(TaskSpec(str(path)))

    # Assert
    assert data.labels == ("ham", "spam")
    assert '"quoted 0' in set(data.train.texts + data.validation.texts + data.test.texts)
    assert sum(len(s) for s in data.splits().values()) == 30


def test_jsonl_integer_labels_sort_numerically(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "d.jsonl"
    records = [{"body": f"doc {i}", "y": [2, 10, 1][i % 3]} for i in range(45)]
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n\n", encoding="utf-8")

    # Execute
    data = load_task(TaskSpec(str(path), text_columns=("body",), label_column="y"))

    # Assert
    assert data.labels == ("1", "2", "10")
    assert dict(all_rows(data))["doc 1"] == data.labels.index("10")


def test_pair_columns_become_text_and_text_pair(tmp_path: Path) -> None:
    # Prepare
    rows = [[f"premise {i}", f"hypothesis {i}", ["yes", "no"][i % 2]] for i in range(40)]
    path = write_csv(tmp_path / "nli.csv", ["premise", "hypothesis", "label"], rows)

    # Execute
    data = load_task(TaskSpec(str(path), text_columns=("premise", "hypothesis"), pair=True))

    # Assert
    for split in data.splits().values():
        assert len(split.text_pairs) == len(split.texts)
        for text, pair in zip(split.texts, split.text_pairs, strict=True):
            assert pair == text.replace("premise", "hypothesis")
    assert describe(data)["text_pairs"] is True


def test_several_text_columns_are_joined_skipping_empty_parts(tmp_path: Path) -> None:
    # Prepare
    rows = [[f"title {i}", "" if i == 0 else f"body {i}", "ab"[i % 2]] for i in range(30)]
    path = write_csv(tmp_path / "d.csv", ["title", "body", "label"], rows)

    # Execute
    data = load_task(TaskSpec(str(path), text_columns=("title", "body"), separator=" || "))

    # Assert
    texts = set(dict(all_rows(data)))
    assert "title 0" in texts
    assert "title 5 || body 5" in texts
    assert data.train.text_pairs == ()


def test_language_modeling_has_texts_only(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": f"line {i}"}) + "\n" for i in range(50)))

    # Execute
    data = load_task(TaskSpec(str(path), kind="language-modeling", label_column=None, max_test=4))

    # Assert
    assert data.labels == ()
    assert (len(data.train), len(data.validation), len(data.test)) == (35, 5, 4)
    assert data.train.label_ids == () and data.test.label_ids == ()
    assert "label_counts" not in describe(data)["splits"]["train"]  # type: ignore[index]


def test_duplicates_dropped_and_conflicting_texts_removed(tmp_path: Path) -> None:
    # Prepare
    rows = labelled({"a": 10, "b": 10}) + [["a text 0", "a"], ["a text 1", "b"]]
    path = write_csv(tmp_path / "d.csv", ["text", "label"], rows)

    # Execute
    dedup = load_task(TaskSpec(str(path)))
    kept = load_task(TaskSpec(str(path), deduplicate=False))

    # Assert
    dedup_texts = [t for t, _ in all_rows(dedup)]
    assert len(dedup_texts) == 19 and "a text 1" not in dedup_texts
    assert dedup.dropped_rows == 3
    assert sum(len(s) for s in kept.splits().values()) == 22


def test_describe_holds_sizes_but_no_data(tmp_path: Path) -> None:
    # Prepare
    path = write_csv(tmp_path / "secret.csv", ["text", "label"], labelled({"x": 10, "y": 20}))
    data = load_task(TaskSpec(str(path)))

    # Execute
    desc = describe(data)
    dumped = json.dumps(desc)

    # Assert
    assert desc["source"] == "secret.csv"
    assert desc["splits"] == {
        "train": {"size": 21, "label_counts": {"x": 7, "y": 14}},
        "validation": {"size": 3, "label_counts": {"x": 1, "y": 2}},
        "test": {"size": 6, "label_counts": {"x": 2, "y": 4}},
    }
    assert "x text" not in dumped and "y text" not in dumped and str(tmp_path) not in dumped


def test_split_len_counts_texts() -> None:
    # Execute / Assert
    assert len(Split(texts=("a", "b"), label_ids=(0, 1))) == 2
