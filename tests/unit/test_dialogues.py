"""A team's own instruction JSONL: format detection, every row checked, the same splits as any
team file, the closed answer set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medusa_fed.errors import ConfigError, DataError
from medusa_fed.team_config import TeamConfig
from medusa_fed.training.data import TaskSpec, describe, load_task
from medusa_fed.training.dialogues import MAX_ANSWER_CHOICES, Dialogue, read_dialogues


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def chat(user: str, answer: str, system: str | None = None) -> dict[str, object]:
    turns = [{"role": "system", "content": system}] if system else []
    turns += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return {"messages": turns}


TEXTS = [f"text number {i}" for i in range(40)]
LABELS = ["yes" if i % 3 else "no" for i in range(40)]


def test_messages_rows_become_prompt_turns_and_a_completion(tmp_path: Path) -> None:
    # Prepare: a system turn, a two-exchange dialogue, extra keys that are ignored
    row = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Capital of France?", "name": "ann"},
            {"role": "assistant", "content": "  Paris\n"},
        ],
        "id": 7,
    }
    path = write_jsonl(tmp_path / "d.jsonl", [row])
    # Execute
    (dialogue,) = read_dialogues(path, "messages")
    # Assert
    assert dialogue.prompt == (
        ("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello."),
        ("user", "Capital of France?"),
    )  # fmt: skip
    assert dialogue.completion == "Paris"


def test_prompt_completion_rows_are_one_user_turn(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "2+2?", "completion": "4"}])
    assert read_dialogues(path, "prompt-completion") == [Dialogue((("user", "2+2?"),), "4")]


@pytest.mark.parametrize(
    ("first", "columns", "kind"),
    [
        (chat("a", "b"), "text", "instruction"),
        ({"prompt": "a", "completion": "b"}, "text", "instruction"),
        ({"prompt": "a"}, "text", "instruction"),  # then refused: no completion (below)
        ({"text": "a", "label": "b"}, "text", "classification"),
        ({"prompt": "a", "label": "b"}, "prompt", "classification"),  # the team's own columns
    ],
)
def test_auto_format_is_decided_by_the_first_row(
    tmp_path: Path, first: dict[str, object], columns: str, kind: str
) -> None:
    # Prepare
    path = write_jsonl(tmp_path / "d.jsonl", [first])
    spec = TaskSpec(str(path), text_columns=(columns,))
    # Execute / Assert: instruction rows are read as such (one row is too few to split)
    if kind == "instruction":
        with pytest.raises(DataError, match="line 1|expected enough texts"):
            load_task(spec)
    else:
        with pytest.raises(DataError, match="at least 2 distinct labels"):
            load_task(spec)


def test_explicit_formats_refuse_other_files(tmp_path: Path) -> None:
    csv = tmp_path / "d.csv"
    csv.write_text("text,label\na,b\n")
    with pytest.raises(DataError, match=r"expects a \.jsonl file.*found '\.csv'"):
        load_task(TaskSpec(str(csv), data_format="messages"))
    with pytest.raises(ConfigError, match="bundled task 'movie'"):
        TaskSpec("movie", data_format="prompt-completion")
    with pytest.raises(ConfigError, match="data-format: expected one of auto, table"):
        TaskSpec(str(csv), data_format="chat")  # type: ignore[arg-type]


GOOD = json.dumps(chat("q", "a"))


def turns(*pairs: tuple[str, object]) -> str:
    """A messages row of (role, content) turns, as one JSONL line."""
    return json.dumps({"messages": [{"role": r, "content": c} for r, c in pairs]})


U, A, S = ("user", "q"), ("assistant", "a"), ("system", "s")
BAD_ROWS = [
    ("messages", '{"prompt": "q"}', "line 2: expected a 'messages' key"),
    ("messages", '{"messages": "hi"}', "line 2: 'messages': expected a non-empty list of turns, "
     "found a string"),
    ("messages", '{"messages": []}', "found an empty list"),
    ("messages", '{"messages": ["hi"]}', "line 2: turn 1: expected an object, found a string"),
    ("messages", '{"messages": [{"role": "user"}]}', "turn 1: expected the keys 'role' and "
     "'content'.*missing 'content'"),
    ("messages", turns(("user", 3), A), "turn 1 'content': expected a string, found a number"),
    ("messages", turns(("user", None), A), "expected a string, found null"),
    ("messages", turns(U, ("assistant", [1])), "turn 2 'content': expected a string, found a list"),
    ("messages", turns(("tool", "q"), A), "expected a role in system, user, assistant, found 'to"),
    ("messages", turns(U), "expected the last turn to be the assistant's answer, found a user"),
    ("messages", turns(S, A), "expected a user turn before the assistant's answer"),
    ("messages", turns(U, S, A), "turn 2: expected a system turn only first"),
    ("messages", turns(U, ("assistant", "  ")), "expected a non-empty answer"),
    ("messages", "[1, 2]", "line 2: expected a JSON object, found a list"),
    ("messages", '{"messages": [', "line 2 is not valid JSON"),
    ("prompt-completion", '{"prompt": "q"}', "line 2: expected the keys 'prompt' and "
     "'completion'.*missing 'completion'"),
    ("prompt-completion", '{"prompt": "q", "completion": 4}', "'completion': expected a string, "
     "found a number"),
    ("prompt-completion", '{"prompt": {"role": "user"}, "completion": "a"}', "'prompt': expected "
     "a string, found an object"),
    ("prompt-completion", '{"prompt": "", "completion": "a"}', "'prompt': expected a non-empty"),
    ("prompt-completion", '{"prompt": "q", "completion": ""}', "'completion': expected a "
     "non-empty answer"),
    ("prompt-completion", '{"prompt": "q", "completion": true}', "found a boolean"),
]  # fmt: skip


@pytest.mark.parametrize(("fmt", "line", "message"), BAD_ROWS)
def test_a_malformed_row_is_one_error_naming_file_and_line(
    tmp_path: Path, fmt: str, line: str, message: str
) -> None:
    # Prepare: a good first row (so auto detection would pick the format too), the bad one second
    first = GOOD if fmt == "messages" else '{"prompt": "q0", "completion": "a"}'
    path = tmp_path / "team.jsonl"
    path.write_text(f"{first}\n{line}\n{first}\n", encoding="utf-8")
    # Execute / Assert: read directly and through load_task (auto detection)
    with pytest.raises(DataError, match=message) as err:
        read_dialogues(path, fmt)  # type: ignore[arg-type]
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(DataError, match=message):
        load_task(TaskSpec(str(path)))


def test_an_empty_file_a_non_utf8_file_and_a_huge_turn_are_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n")
    with pytest.raises(DataError, match="empty.jsonl: expected messages rows.*found an empty file"):
        read_dialogues(empty, "messages")
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"prompt": "caf\xe9", "completion": "a"}\n')
    with pytest.raises(DataError, match="expected UTF-8 JSON lines, found a byte that is not"):
        read_dialogues(latin, "prompt-completion")
    huge = write_jsonl(tmp_path / "huge.jsonl", [{"prompt": "x" * 100_001, "completion": "a"}])
    with pytest.raises(DataError, match="line 1: 'prompt': expected at most 100,000 characters"):
        read_dialogues(huge, "prompt-completion")
    with pytest.raises(DataError, match="data file not found"):
        read_dialogues(tmp_path / "missing.jsonl", "messages")


def test_a_closed_answer_set_splits_exactly_like_the_same_labelled_csv(tmp_path: Path) -> None:
    # Prepare: the same rows as a labelled CSV and as chat messages
    csv = tmp_path / "t.csv"
    csv.write_text(
        "text,label\n" + "".join(f"{t},{lab}\n" for t, lab in zip(TEXTS, LABELS, strict=True))
    )
    path = write_jsonl(
        tmp_path / "t.jsonl", [chat(t, lab) for t, lab in zip(TEXTS, LABELS, strict=True)]
    )
    # Execute
    table = load_task(TaskSpec(str(csv), seed=3, max_train=20))
    dialogues = load_task(TaskSpec(str(path), seed=3, max_train=20))
    # Assert: same answer set and label ids, same examples in each split, stratified
    assert dialogues.kind == "instruction" and dialogues.answers == table.labels == ("no", "yes")
    for name, split in dialogues.splits().items():
        other = table.splits()[name]
        assert [d.prompt[0][1] for d in split.dialogues] == list(other.texts)
        assert split.label_ids == other.label_ids
        assert set(split.label_ids) == {0, 1}
    assert describe(dialogues)["answer_choices"] == 2
    assert "yes" not in json.dumps(describe(dialogues))  # no answer leaves the site


def test_free_form_answers_split_like_raw_text(tmp_path: Path) -> None:
    # Prepare: every completion different: free-form
    csv = tmp_path / "t.csv"
    csv.write_text("text\n" + "".join(f"{t}\n" for t in TEXTS))
    rows = [{"prompt": t, "completion": f"answer {i}"} for i, t in enumerate(TEXTS)]
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    # Execute
    raw = load_task(TaskSpec(str(csv), kind="language-modeling", label_column=None, seed=5))
    data = load_task(TaskSpec(str(path), seed=5))
    # Assert
    assert data.answers == () and data.kind == "instruction"
    for name, split in data.splits().items():
        assert [d.prompt[0][1] for d in split.dialogues] == list(raw.splits()[name].texts)
        assert split.label_ids == ()
        assert [d.completion for d in split.dialogues] == [
            f"answer {TEXTS.index(d.prompt[0][1])}" for d in split.dialogues
        ]


@pytest.mark.parametrize(
    ("answers", "closed"),
    [
        (["Yes", "yes.", "No", "no"] * 3, True),  # two answers as normalize_answer reads them
        ([f"a{i % (MAX_ANSWER_CHOICES + 1)}" for i in range(120)], False),  # 21 distinct
        ([f"a{i % MAX_ANSWER_CHOICES}" for i in range(120)], True),
        (["a", "b", "a", "b", "a", "b", "c"], False),  # 'c' once: too rare to stratify
        (["same"] * 10, False),  # one answer is not a choice
    ],
)
def test_the_closed_answer_set(tmp_path: Path, answers: list[str], closed: bool) -> None:
    rows = [{"prompt": f"q{i}", "completion": a} for i, a in enumerate(answers)]
    data = load_task(TaskSpec(str(write_jsonl(tmp_path / "t.jsonl", rows))))
    assert bool(data.answers) == closed
    if answers[0] == "Yes":
        assert data.answers == ("No", "Yes")  # the first spelling seen, sorted


def test_repeated_prompts_keep_the_first_and_conflicting_ones_are_dropped(tmp_path: Path) -> None:
    rows = [{"prompt": t, "completion": lab} for t, lab in zip(TEXTS, LABELS, strict=True)]
    rows += [rows[0], {"prompt": TEXTS[1], "completion": "other"}]
    data = load_task(TaskSpec(str(write_jsonl(tmp_path / "t.jsonl", rows))))
    prompts = [d.prompt[0][1] for s in data.splits().values() for d in s.dialogues]
    assert data.dropped_rows == 3  # the repeat, and both rows of the conflicting prompt
    assert sorted(prompts) == sorted(t for t in TEXTS if t != TEXTS[1])


def test_node_config_data_format() -> None:
    team = TeamConfig.from_node_config({"task": "/d/chat.jsonl", "data-format": "messages"})
    assert team.data_format == "messages"
    assert TeamConfig.from_node_config(team.to_node_config()) == team
    assert "data-format" not in TeamConfig(name="m", task="movie").to_node_config()
    with pytest.raises(ConfigError, match="data-format: expected one of auto, table, messages"):
        TeamConfig.from_node_config({"task": "/d/chat.jsonl", "data-format": "chatml"})


def test_auto_detection_leaves_a_latin1_table_jsonl_to_the_table_reader(tmp_path: Path) -> None:
    # Prepare: a labelled JSONL table, not UTF-8 (the table reader reads it as latin-1)
    rows = "".join(f'{{"text": "caf\xe9 {i}", "label": "{LABELS[i]}"}}\n' for i in range(40))
    path = tmp_path / "t.jsonl"
    path.write_bytes(rows.encode("latin-1"))
    # Execute
    data = load_task(TaskSpec(str(path)))
    # Assert
    assert data.kind == "classification" and data.labels == ("no", "yes")
