"""The bundled all-MiniLM-L6-v2 learns a real task (BBC topics) from a few dozen examples."""

from __future__ import annotations

import pytest

from medusa_fed.training.branch import finetune
from medusa_fed.training.config import ModelSpec, TrainConfig
from medusa_fed.training.data import TaskSpec, load_task
from medusa_fed.training.evaluate import evaluate
from medusa_fed.training.models import load_base


@pytest.mark.slow
def test_finetune_beats_the_untuned_model() -> None:
    # Prepare (about 20 s on 2 CPU cores)
    base = load_base(ModelSpec())
    data = load_task(TaskSpec(source="bbc", max_train=60, max_test=100, seed=0))
    cfg = TrainConfig(epochs=4, lr=1e-4, head_lr=1e-2, max_length=64, seed=0)
    before = evaluate(base, None, None, data.test, num_labels=len(data.labels), max_length=64)
    # Execute
    branch = finetune(base, data, cfg)
    start = base.shared_state()
    tuned = {n: start[n] + branch.delta[n] for n in start}
    after = evaluate(base, tuned, branch.head, data.test, max_length=64)
    # Assert (measured: 0.30 -> 0.83 accuracy)
    assert after["accuracy"] >= before["accuracy"] + 0.25
    assert after["accuracy"] >= 0.6
