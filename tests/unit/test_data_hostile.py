"""Data files a careless or hostile team might give: each is refused with the line or row and
what was expected, or warned about, never silently misread."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from medusa_fed.errors import DataError
from medusa_fed.training.data import MAX_TEXT_CHARS, TaskSpec, load_task


def _csv(tmp_path: Path, text: str, name: str = "d.csv") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def _rows(n: int, start: int = 0) -> str:
    return "".join(f"text number {i},{'pos' if i % 2 else 'neg'}\n" for i in range(start, n))


def test_a_row_with_more_fields_than_the_header_is_refused_with_its_line(tmp_path):
    source = _csv(tmp_path, "text,label\n" + _rows(6) + "a text, pos,neg\n" + _rows(12, 6))
    with pytest.raises(DataError, match=r"line 8: expected at most 2 fields .*found 3"):
        load_task(TaskSpec(source))


def test_a_duplicated_header_column_is_refused(tmp_path):
    source = _csv(tmp_path, "text,label,label\n" + "a,pos,neg\nb,neg,pos\n" * 5)
    with pytest.raises(DataError, match=r"column\(s\) \['label'\] appear twice"):
        load_task(TaskSpec(source))


def test_an_unbalanced_quote_that_swallows_rows_is_refused(tmp_path):
    source = _csv(tmp_path, "text,label\n" + _rows(4) + '"oops,pos\n' + _rows(14, 4) + 'x",neg\n')
    with pytest.raises(DataError, match=r"line 6: a quoted field runs over .*unbalanced quote"):
        load_task(TaskSpec(source))


def test_a_real_multiline_text_is_kept(tmp_path):
    source = _csv(tmp_path, 'text,label\n"first line\nsecond line",pos\n' + _rows(12))
    data = load_task(TaskSpec(source))
    assert sum(len(s) for s in (data.train, data.validation, data.test)) == 13


def test_an_overlong_row_is_refused_with_its_row_number(tmp_path):
    source = _csv(tmp_path, "text,label\n" + _rows(5) + "x" * (MAX_TEXT_CHARS + 1) + ",pos\n")
    with pytest.raises(DataError, match=r"row 6: expected a text of at most 100,000 characters"):
        load_task(TaskSpec(source))


@pytest.mark.parametrize(
    "variant", ["Pos", "\uff50\uff4f\uff53", "pos\u200b"], ids=["case", "fullwidth", "zero-width"]
)
def test_lookalike_labels_are_normalised_or_warned_about(tmp_path, caplog, variant):
    rows = _rows(12) + "".join(f"variant text {i},{variant}\n" for i in range(6))
    rows += " padded text ,  pos \n"  # trimmed: the same class as pos
    source = _csv(tmp_path, "text,label\n" + rows)
    with caplog.at_level(logging.WARNING, logger="medusa_fed.training.data"):
        data = load_task(TaskSpec(source))
    assert set(data.labels) == {"neg", "pos", variant}
    assert any("differ only by case, width, invisible" in r.message for r in caplog.records)


def test_integer_labels_with_leading_zeros_are_warned_about(tmp_path, caplog):
    rows = "".join(f"text {i},{'1' if i % 2 else '0'}\n" for i in range(12))
    rows += "".join(f"late {i},01\n" for i in range(6))
    with caplog.at_level(logging.WARNING, logger="medusa_fed.training.data"):
        load_task(TaskSpec(_csv(tmp_path, "text,label\n" + rows)))
    assert any("'01'" in r.message and "'1'" in r.message for r in caplog.records)
