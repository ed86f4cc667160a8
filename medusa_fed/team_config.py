"""A team site's own settings (Flower node config), validated once when a message arrives.

A team decides for itself what data it trains on and whether it accepts masks: the coordinator
cannot override ``controlled = false``. Keys (kebab-case, as in ``--node-config``)::

    team            name shown in reports (default: the task name)
    task            bundled task (movie, tweet, spam, bbc) or a path to .csv/.tsv/.jsonl/.parquet
    text-columns    comma-separated text column(s) of a file (default: text)
    label-column    label column of a file (default: label)
    controlled      true: accept the coordinator's mask; false: uncontrolled branch (default: true)
    max-train       optional cap on training examples (the run's max-train applies if lower)
    share-head      send the trained classification head to the coordinator (default: true)
    device          where this site trains and scores: auto (CUDA when present), cpu, cuda or
                    cuda:N (default: auto); bf16 autocast on CUDA
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from medusa_fed.errors import ConfigError
from medusa_fed.run_config import _parse_bool
from medusa_fed.training.device import check_device

_KNOWN = {
    "team",
    "task",
    "text-columns",
    "label-column",
    "controlled",
    "max-train",
    "share-head",
    "device",
}
# Flower's simulation engine adds these to every node config.
_FLOWER_KEYS = {"partition-id", "num-partitions"}


@dataclass(frozen=True)
class TeamConfig:
    name: str
    task: str
    text_columns: tuple[str, ...] = ("text",)
    label_column: str = "label"
    controlled: bool = True
    max_train: int | None = None
    share_head: bool = True
    device: str = "auto"

    def __post_init__(self) -> None:
        check_device(self.device)
        if not self.name or not self.name.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"team name must be letters, digits, '-' or '_', found {self.name!r}")
        if not self.task:
            raise ConfigError("node config 'task' is required: a bundled task name or a data file")
        if self.max_train is not None and self.max_train < 1:
            raise ConfigError(f"max-train must be >= 1, found {self.max_train}")

    @classmethod
    def from_node_config(cls, raw: Mapping[str, Any]) -> TeamConfig:
        unknown = sorted(set(raw) - _KNOWN - _FLOWER_KEYS)
        if unknown:
            raise ConfigError(
                f"unknown node-config keys {unknown}; expected some of {sorted(_KNOWN)}"
            )
        if "task" not in raw:
            raise ConfigError(
                "node config has no 'task': start the SuperNode with "
                "--node-config \"task='movie'\" (a bundled task) or task='/path/to/data.csv'"
            )
        task = str(raw["task"])
        try:
            max_train = int(raw["max-train"]) if "max-train" in raw else None
        except ValueError as exc:
            found = raw["max-train"]
            raise ConfigError(f"max-train: expected an integer, found {found!r}") from exc
        return cls(
            name=str(raw.get("team", task.rsplit("/", 1)[-1].split(".")[0])),
            task=task,
            text_columns=tuple(c.strip() for c in str(raw.get("text-columns", "text")).split(",")),
            label_column=str(raw.get("label-column", "label")),
            controlled=_parse_bool("controlled", raw.get("controlled", True)),
            max_train=max_train,
            share_head=_parse_bool("share-head", raw.get("share-head", True)),
            device=str(raw.get("device", "auto")),
        )

    def to_node_config(self) -> dict[str, str | int | bool]:
        out: dict[str, str | int | bool] = {
            "team": self.name,
            "task": self.task,
            "text-columns": ",".join(self.text_columns),
            "label-column": self.label_column,
            "controlled": self.controlled,
            "share-head": self.share_head,
        }
        if self.max_train is not None:
            out["max-train"] = self.max_train
        if self.device != "auto":
            out["device"] = self.device
        return out
