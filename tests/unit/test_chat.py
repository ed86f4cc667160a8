"""A team's instruction examples on a tiny Llama: the chat prompt, loss on the completion only,
fitting max-length, and the scores of generated answers."""

from __future__ import annotations

import copy
import random
from dataclasses import replace

import pytest

from medusa_fed.errors import ConfigError
from medusa_fed.training.branch import finetune, prompter_of
from medusa_fed.training.chat import ChatTask, chat_example, encode_dialogues, fit, token_f1
from medusa_fed.training.config import ModelSpec, TrainConfig
from medusa_fed.training.data import Split, TaskData
from medusa_fed.training.dialogues import Dialogue
from medusa_fed.training.evaluate import evaluate
from medusa_fed.training.instruct import answer_ids
from medusa_fed.training.models import BaseModel, load_base
from medusa_fed.training.tiny_models import WORDS, write_tiny_model

# a template in the tiny vocabulary's words: "[CLS] <role> <content> [SEP]" per turn
TEMPLATE = (
    "{% for m in messages %}[CLS] {{ m['role'] }} {{ m['content'] }} [SEP] {% endfor %}"
    "{% if add_generation_prompt %}[CLS] the {% endif %}"
)
DIALOGUES = (
    Dialogue((("system", "a story"), ("user", "good great fun movie")), "happy"),
    Dialogue((("user", "bad awful film"), ("assistant", "sad"), ("user", "and this")), "very sad"),
)


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> BaseModel:
    folder = write_tiny_model(tmp_path_factory.mktemp("tiny") / "llama", "llama")
    return load_base(ModelSpec(source=str(folder), family="causal-lm", method="lora"))


@pytest.fixture(scope="module")
def templated(llama: BaseModel) -> object:
    tok = copy.deepcopy(llama.tokenizer)
    tok.chat_template = TEMPLATE
    return tok


@pytest.mark.parametrize("with_template", [False, True])
def test_labels_are_minus_100_exactly_on_the_prompt(
    llama: BaseModel, templated: object, with_template: bool
) -> None:
    # Prepare
    tok = templated if with_template else llama.tokenizer
    # Execute
    batch = encode_dialogues(tok, DIALOGUES, max_length=48, task=ChatTask())
    # Assert: row = prompt + completion + end; labels -100 on the prompt and the padding
    for row, dialogue in enumerate(DIALOGUES):
        prompt, answer = chat_example(tok, dialogue, 48, ChatTask())
        assert answer == answer_ids(tok, dialogue.completion)
        assert answer[-1] == tok.eos_token_id
        length = len(prompt) + len(answer)
        assert batch["input_ids"][row, :length].tolist() == prompt + answer
        assert batch["labels"][row, : len(prompt)].tolist() == [-100] * len(prompt)
        assert batch["labels"][row, len(prompt) : length].tolist() == answer
        assert (batch["labels"][row, length:] == -100).all()
        assert int(batch["attention_mask"][row].sum()) == length


def test_the_chat_template_renders_every_turn(templated: object) -> None:
    prompt, _ = chat_example(templated, DIALOGUES[1], 48, ChatTask())
    text = templated.decode(prompt)  # type: ignore[attr-defined]
    turn = "[CLS] [UNK] {} [SEP]"  # the role names are not in the tiny vocabulary
    want = " ".join([turn.format("bad awful film"), turn.format("sad"), turn.format("and this")])
    assert text.split() == f"{want} [CLS] the".split()


def test_fitting_cuts_the_prompt_from_the_left_and_the_answer_at_its_end() -> None:
    prompt, answer = list(range(100, 140)), list(range(10))
    # a long prompt: its end survives, the answer whole
    assert fit(prompt, answer, 32) == (prompt[-22:], answer)
    # a long answer too: the prompt keeps half, the answer its first tokens
    assert fit(prompt, list(range(30)), 32) == (prompt[-16:], list(range(16)))
    # a short prompt leaves the rest to the answer
    assert fit(prompt[:4], list(range(40)), 32) == (prompt[:4], list(range(28)))
    # a closed set reserves the longest answer's room for every example
    assert fit(prompt, [1, 2], 32, reserve=6) == (prompt[-26:], [1, 2])
    # short enough: nothing cut
    assert fit(prompt[:5], answer, 32) == (prompt[:5], answer)


def test_long_examples_fit_max_length_with_the_completion_start_kept(llama: BaseModel) -> None:
    tok = llama.tokenizer
    long = Dialogue((("user", " ".join(["movie"] * 300) + " plot"),), " ".join(["good"] * 100))
    prompt, answer = chat_example(tok, long, 40, ChatTask())
    assert len(prompt) + len(answer) == 40
    # the question's end survives, then "Assistant:" (two unknown words here)
    assert tok.decode(prompt).split()[-3:] == ["plot", "[UNK]", "[UNK]"]
    assert answer == answer_ids(tok, long.completion)[:20]
    with pytest.raises(ConfigError, match="max-length 6: expected the longest of the 2 answers"):
        chat_example(tok, DIALOGUES[0], 6, ChatTask(("happy", "very very sad")))


@pytest.mark.parametrize(
    ("prediction", "reference", "f1"),
    [
        ("Paris", "paris.", 1.0),
        ("the cat sat", "a cat sat down", 0.8),  # articles dropped: 2 shared of 2 and 3
        ("blue", "red", 0.0),
        ("", "", 1.0),
        ("", "red", 0.0),
        ("it's fine", "its fine", 1.0),  # punctuation removed, not split on
    ],
)
def test_token_f1_is_squad_style(prediction: str, reference: str, f1: float) -> None:
    assert token_f1(prediction, reference) == pytest.approx(f1)


def _task(answers: tuple[str, ...], rows: list[Dialogue]) -> TaskData:
    split = Split(
        tuple(d.flat() for d in rows),
        tuple(answers.index(d.completion) for d in rows) if answers else (),
        dialogues=tuple(rows),
    )
    return TaskData("toy", "instruction", (), split, split, split, "", 0, "", answers)


def _rows(closed: bool) -> list[Dialogue]:
    rng = random.Random(0)
    rows = []
    for i in range(24):
        cue = ("good", "great", "love") if i % 2 else ("bad", "awful", "hate")
        words = [rng.choice(cue) for _ in range(2)] + [rng.choice(WORDS) for _ in range(2)]
        answer = ("happy" if i % 2 else "sad") if closed else f"{words[0]} movie"
        rows.append(Dialogue((("user", " ".join(words)),), answer))
    return rows


@pytest.mark.parametrize("closed", [True, False])
def test_training_on_dialogues_learns_the_completions(llama: BaseModel, closed: bool) -> None:
    # Prepare: full fine-tuning (as the instruct test: the tiny model's LoRA is slow to learn)
    full = load_base(replace(llama.spec, method="full"))
    data = _task(("happy", "sad") if closed else (), _rows(closed))
    task = prompter_of(full, data)
    assert task == ChatTask(data.answers)
    before = evaluate(full, None, None, data.test, max_length=32, prompter=task)
    # Execute
    tuned = finetune(full, data, TrainConfig(max_steps=80, lr=1e-2, batch_size=8))
    start = full.shared_state()
    shared = {n: start[n] + tuned.delta[n] for n in start}
    after = evaluate(full, shared, None, data.test, max_length=32, prompter=task)
    # Assert: the metrics each kind of task reports, and that the answers were learnt
    free = {"exact_match", "token_f1", "loss", "perplexity", "tokens", "examples"}
    assert set(after) == (free | {"accuracy", "macro_f1"} if closed else free)
    assert after["exact_match"] == 1.0 and after["token_f1"] == 1.0
    assert before["exact_match"] < 0.5
    assert after["loss"] < before["loss"]
    answers = [answer_ids(full.tokenizer, d.completion) for d in data.test.dialogues]
    assert after["tokens"] == sum(len(a) for a in answers)  # the loss is on the answers only
    if closed:
        assert after["accuracy"] == 1.0


def test_scoring_never_feeds_a_position_past_max_length(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Prepare: GPT-2 has learned positions (64 here): a long prompt with a short answer shares a
    # batch with a short prompt and a long answer
    folder = write_tiny_model(tmp_path / "gpt2", "gpt2")
    gpt2 = load_base(ModelSpec(source=str(folder), family="causal-lm", method="full"))
    rows = [
        Dialogue((("user", " ".join(["movie"] * 80)),), "good"),
        Dialogue((("user", "plot"),), " ".join(["story"] * 40)),
    ]
    data = _task((), rows)
    # Execute
    metrics = evaluate(
        gpt2, None, None, data.test, batch_size=2, max_length=64, prompter=ChatTask()
    )
    # Assert
    assert metrics["examples"] == 2.0 and 0.0 <= metrics["token_f1"] <= 1.0
