"""Shared fixtures: a tiny random BERT and three small learnable text tasks written as CSV files."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from medusa_fed.run_config import RunConfig
from medusa_fed.training.tiny_models import WORDS, write_tiny_model

# Each task: a label is signalled by its own words, padded with random vocabulary words.
TASK_WORDS = {
    "alpha": (("good", "great", "love"), ("bad", "awful", "hate")),
    "beta": (("movie", "film", "plot"), ("music", "scene", "story")),
    "gamma": (("happy", "fun", "nice"), ("sad", "dull", "boring")),
}


def write_task(
    path: Path, positive: tuple[str, ...], negative: tuple[str, ...], n: int = 120, seed: int = 0
) -> Path:
    rng = random.Random(seed)
    lines = ["text,label"]
    for i in range(n):
        label = i % 2
        cue = positive if label else negative
        words = [rng.choice(cue) for _ in range(3)] + [rng.choice(WORDS) for _ in range(3)]
        rng.shuffle(words)
        lines.append(" ".join(words) + ("," + ("pos" if label else "neg")))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "bert", "bert")


@pytest.fixture(scope="session")
def tiny_tasks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tasks")
    return {
        name: write_task(root / f"{name}.csv", pos, neg, seed=i)
        for i, (name, (pos, neg)) in enumerate(TASK_WORDS.items())
    }


@pytest.fixture(scope="session")
def tiny_run_config():  # type: ignore[no-untyped-def]
    """A factory of run configs small enough for a unit test (seconds on 2 cores)."""
    return make_tiny_run_config


def make_tiny_run_config(model: Path, out: Path, **overrides: object) -> RunConfig:
    raw: dict[str, object] = {
        "model": str(model),
        "epochs": 3,
        "probe-epochs": 1,
        "max-train": 80,
        "max-eval": 40,
        "batch-size": 8,
        "max-length": 16,
        "lr": 3e-3,
        "out-dir": str(out),
        "min-teams": 2,
        # the paper's one-shot protocol (one TRAIN, no head re-fit): what most tests check; the
        # rounds / re-fit tests ask for them
        "rounds": 1,
        "refit-epochs": 0,
        "warm-start": False,
    }
    raw.update(overrides)
    return RunConfig.from_mapping(raw)
