"""A labelled task as instructions for a causal LM: prompts, answer-only loss, scoring."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from medusa_fed.errors import ConfigError
from medusa_fed.training.branch import finetune, prompter_of
from medusa_fed.training.config import ModelSpec, TrainConfig
from medusa_fed.training.data import Split, TaskData
from medusa_fed.training.dialogues import normalize_answer
from medusa_fed.training.evaluate import evaluate
from medusa_fed.training.instruct import (
    Prompter,
    answer_ids,
    encode_instruction,
    prompt_ids,
    score_and_generate,
)
from medusa_fed.training.models import BaseModel, load_base
from medusa_fed.training.tiny_models import write_tiny_model

TEXTS = ("good great fun movie", "bad awful boring film plot", "love this story", "hate it") * 6
TASK = TaskData(
    "toy", "classification", ("happy", "sad"), *(Split(TEXTS, (0, 1, 0, 1) * 6),) * 3, "", 0,
    "is this film good",
)  # fmt: skip


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> BaseModel:
    folder = write_tiny_model(tmp_path_factory.mktemp("tiny") / "llama", "llama")
    return load_base(ModelSpec(source=str(folder), family="causal-lm", method="lora"))


def test_training_batch_puts_loss_on_the_answer_tokens_only(llama: BaseModel) -> None:
    # Prepare
    tok, prompter = llama.tokenizer, prompter_of(llama, TASK)
    assert prompter is not None
    # Execute
    batch = encode_instruction(tok, prompter, TEXTS[:2], (0, 1), max_length=32)
    # Assert: each row is prompt + answer + end; only answer and end carry labels
    for row, label in enumerate((0, 1)):
        answer = answer_ids(tok, prompter.answers[label])
        length = int(batch["attention_mask"][row].sum())
        targets = batch["labels"][row, :length]
        assert targets[targets != -100].tolist() == answer
        assert batch["input_ids"][row, length - len(answer) : length].tolist() == answer
        assert (batch["labels"][row, length:] == -100).all()


def test_long_texts_are_cut_so_prompt_and_answer_fit(llama: BaseModel) -> None:
    # Prepare
    prompter = Prompter("is this film good", ("happy", "sad"))
    long_text = " ".join(["movie"] * 500)
    # Execute
    ids = prompt_ids(llama.tokenizer, prompter, long_text, max_length=40)
    # Assert: the question and the answer words survive the cut
    longest = max(len(answer_ids(llama.tokenizer, a)) for a in prompter.answers)
    assert len(ids) + longest <= 40
    assert "happy" in llama.tokenizer.decode(ids)
    with pytest.raises(ConfigError, match="max-length 6"):
        prompt_ids(llama.tokenizer, prompter, long_text, max_length=6)


def test_cached_scores_equal_full_sequence_log_likelihoods(llama: BaseModel) -> None:
    # Prepare: prompts of different lengths (left padding), answers of 2 and 3 tokens
    team = llama.build(None)
    tok = llama.tokenizer
    prompter = Prompter("is this film good", ("happy", "very sad"))
    prompts = [prompt_ids(tok, prompter, t, 48) for t in TEXTS[:4]]
    choices = [answer_ids(tok, a) for a in prompter.answers]
    # Execute
    scores, generated = score_and_generate(team.module, tok, prompts, choices, max_new_tokens=3)
    # Assert: equal to scoring each prompt + answer on its own, unpadded
    for i, prompt in enumerate(prompts):
        for j, choice in enumerate(choices):
            with torch.no_grad():
                logits = team.module(input_ids=torch.tensor([prompt + choice])).logits[0]
            logp = torch.log_softmax(logits.float(), -1)
            want = sum(float(logp[len(prompt) - 1 + k, c]) for k, c in enumerate(choice))
            assert float(scores[i, j]) == pytest.approx(want, abs=1e-4)
        with torch.no_grad():  # greedy continuation equals argmax decoding of the lone prompt
            ids = list(prompt)
            for _ in range(len(generated[i])):
                ids.append(int(team.module(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
        assert ids[len(prompt) :] == generated[i]


def test_training_on_instructions_raises_the_answer_accuracy(llama: BaseModel) -> None:
    # Prepare: full fine-tuning (the tiny model's frozen output layer keeps LoRA slow here)
    full = load_base(replace(llama.spec, method="full"))
    cfg = TrainConfig(max_steps=100, lr=1e-2, batch_size=8, weight_decay=0.0)
    prompter = prompter_of(full, TASK)
    before = evaluate(full, None, None, TASK.test, max_length=32, prompter=prompter)
    # Execute
    tuned = finetune(full, TASK, cfg)
    start = full.shared_state()
    after = evaluate(
        full, {n: start[n] + tuned.delta[n] for n in start}, None, TASK.test, max_length=32,
        prompter=prompter,
    )  # fmt: skip
    # Assert: rank classification and the generated answer both learn the toy task
    assert set(after) >= {"accuracy", "macro_f1", "exact_match", "examples"}
    assert after["accuracy"] == 1.0 and after["exact_match"] == 1.0
    assert before["exact_match"] < 1.0


def test_answers_compare_in_one_normal_form() -> None:
    assert normalize_answer("  Positive.\n") == normalize_answer("positive")
    assert normalize_answer("ｐｏｓ") != normalize_answer("pos")  # NFC keeps fullwidth distinct
    with pytest.raises(ConfigError, match="label words"):
        Prompter("q", ("only",))


def test_merged_adapter_exports_as_a_peft_folder_that_generates(
    llama: BaseModel, tmp_path: Path
) -> None:
    # Prepare
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from medusa_fed.training.export import save_model_dir

    gen = torch.Generator().manual_seed(0)
    shared = {
        n: t + 0.05 * torch.randn(t.shape, generator=gen) for n, t in llama.shared_state().items()
    }
    # Execute
    folder = save_model_dir(llama, tmp_path / "adapter", shared)
    loaded = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(llama.directory), folder
    )
    # Assert: a PEFT adapter folder whose weights are the merged values, and it generates
    assert (folder / "adapter_config.json").is_file()
    assert (folder / "adapter_model.safetensors").is_file()
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(loaded)
    for name, value in shared.items():
        assert torch.equal(state[name], value), name
    ids = torch.tensor([prompt_ids(llama.tokenizer, Prompter("q", ("happy", "sad")), "good", 24)])
    out = loaded.generate(input_ids=ids, max_new_tokens=3, do_sample=False)
    assert out.shape[1] > ids.shape[1]
