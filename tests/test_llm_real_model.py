"""The packaged SmolLM2-135M-Instruct end to end on one team: convert once, masked LoRA steps,
score as instructions, export a PEFT adapter that loads and generates (about 1-2 min, 2 cores)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from medusa_fed.training.branch import finetune, prompter_of
from medusa_fed.training.config import ModelSpec, TrainConfig
from medusa_fed.training.data import TaskSpec, load_task
from medusa_fed.training.evaluate import evaluate
from medusa_fed.training.export import save_model_dir
from medusa_fed.training.models import BaseModel, load_base

NAME = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def smollm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BaseModel]:
    pytest.importorskip("gguf")
    old = os.environ.get("MEDUSA_CACHE")
    os.environ["MEDUSA_CACHE"] = str(tmp_path_factory.mktemp("cache"))  # converted once here
    try:
        yield load_base(ModelSpec(source=NAME, method="lora"))
    finally:
        if old is None:
            os.environ.pop("MEDUSA_CACHE", None)
        else:
            os.environ["MEDUSA_CACHE"] = old


def test_the_named_model_converts_once_to_the_same_weights(smollm: BaseModel) -> None:
    # Execute: a second load reads the cached folder
    again = load_base(ModelSpec(source=NAME, method="lora"))
    # Assert
    assert smollm.spec.family == "causal-lm"  # the name fixes the family
    assert again.directory == smollm.directory
    assert again.fingerprint() == smollm.fingerprint()
    assert (smollm.directory / "model.safetensors").is_file()
    shapes = smollm.shapes
    assert any(n.endswith("mlp.down_proj.lora_A.weight") for n in shapes)  # MLP projections too
    assert any(n.endswith("self_attn.o_proj.lora_B.weight") for n in shapes)


def test_masked_lora_steps_score_and_export_a_generating_adapter(
    smollm: BaseModel, tmp_path: Path
) -> None:
    # Prepare
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    data = load_task(TaskSpec(source="movie", max_train=8, max_validation=4, max_test=8))
    prompter = prompter_of(smollm, data)
    gen = torch.Generator().manual_seed(0)
    mask = {n: torch.rand(s, generator=gen) < 0.3 for n, s in smollm.shapes.items()}
    cfg = TrainConfig(max_steps=2, batch_size=4, max_length=96, lr=1e-3)
    # Execute
    branch = finetune(smollm, data, cfg, mask=mask)
    start = smollm.shared_state()
    tuned = {n: start[n] + branch.delta[n] for n in start}
    scores = evaluate(smollm, tuned, None, data.test, max_length=96, prompter=prompter)
    folder = save_model_dir(smollm, tmp_path / "adapter", tuned)
    base = AutoModelForCausalLM.from_pretrained(smollm.directory)
    model = PeftModel.from_pretrained(base, folder)
    messages = [{"role": "user", "content": "What is 2 + 2? Answer with a number."}]
    ids = smollm.tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt"
    )
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    out = model.generate(input_ids=ids, max_new_tokens=8, do_sample=False)
    # Assert: bit-exact outside the mask, moved inside it; metrics of an instruction task
    for name, delta in branch.delta.items():
        assert (delta[~mask[name]] == 0).all(), name
    assert any(bool((d[mask[n]] != 0).any()) for n, d in branch.delta.items())
    assert 0.0 <= scores["accuracy"] <= 1.0 and 0.0 <= scores["exact_match"] <= 1.0
    assert scores["examples"] == len(data.test)
    assert out.shape[1] > ids.shape[1]
    assert smollm.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()


def test_a_messages_row_renders_as_the_models_own_chat_template(smollm: BaseModel) -> None:
    # Prepare
    from medusa_fed.training.chat import ChatTask, chat_example
    from medusa_fed.training.dialogues import Dialogue

    tok = smollm.tokenizer
    row = Dialogue((("system", "Answer in one word."), ("user", "Is the sky blue?")), "Yes")
    # Execute
    prompt, answer = chat_example(tok, row, 128, ChatTask())
    whole = tok.apply_chat_template(
        [*row.messages(), {"role": "assistant", "content": row.completion}], tokenize=True
    )
    whole = list(whole["input_ids"] if hasattr(whole, "keys") else whole)
    # Assert: prompt + answer is the template's own rendering of the dialogue, up to its final
    # newline; the answer ends with the end-of-turn token
    assert whole[: len(prompt) + len(answer)] == prompt + answer
    assert tok.decode(whole[len(prompt) + len(answer) :]) == "\n"
    assert tok.decode(answer) == "Yes<|im_end|>"
