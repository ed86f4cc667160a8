"""A team site's own settings (Flower node config), validated once when a message arrives.

A team decides for itself what data it trains on and whether it accepts masks: the coordinator
cannot override ``controlled = false``. Keys (kebab-case, as in ``--node-config``)::

    team            name shown in reports (default: the task name)
    task            bundled task (movie, tweet, spam, bbc) or a path to .csv/.tsv/.jsonl/.parquet
    text-columns    comma-separated text column(s) of a file (default: text)
    label-column    label column of a file (default: label); "" trains a causal LM on raw text
    data-format     how a file's rows read (default: auto): table (text-columns, label-column),
                    messages (JSONL chat turns, the last one the assistant's answer) or
                    prompt-completion (JSONL prompt / completion strings); auto: a .jsonl file
                    whose first row lacks the table columns and has a messages, prompt or
                    completion key is read as that instruction format
    controlled      true: accept the coordinator's mask; false: uncontrolled branch (default: true)
    max-train       optional cap on training examples (the run's max-train applies if lower)
    share-head      send the trained classification head to the coordinator (default: true)
    device          where this site trains and scores: auto (CUDA when present), cpu, cuda or
                    cuda:N (default: auto); bf16 autocast on CUDA

In a local simulation (``flwr run`` on a simulation SuperLink, ``medusa simulate``) the virtual
SuperNodes have no node config of their own, only Flower's ``partition-id``: node ``i`` plays the
``i``-th team of the run config's ``teams`` list (:data:`SIMULATION_KEYS`), e.g.
``teams = "movie,tweet,legal=/data/legal.csv"`` and ``uncontrolled = "tweet"``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from medusa_fed.errors import ConfigError
from medusa_fed.run_config import _parse_bool
from medusa_fed.training.device import check_device
from medusa_fed.training.dialogues import DATA_FORMATS, DataFormat

_KNOWN = {
    "team",
    "task",
    "text-columns",
    "label-column",
    "data-format",
    "controlled",
    "max-train",
    "share-head",
    "device",
}
# Flower's simulation engine adds these to every node config.
_FLOWER_KEYS = {"partition-id", "num-partitions"}
# Run-config keys that only a simulation reads (the teams its virtual SuperNodes play); the
# coordinator's RunConfig leaves them out.
SIMULATION_KEYS = ("teams", "uncontrolled")
MAX_TEAMS = 16


@dataclass(frozen=True)
class TeamConfig:
    name: str
    task: str
    text_columns: tuple[str, ...] = ("text",)
    label_column: str = "label"
    data_format: DataFormat = "auto"
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
        if self.data_format not in DATA_FORMATS:
            raise ConfigError(
                f"data-format: expected one of {', '.join(DATA_FORMATS)}, "
                f"found {self.data_format!r}"
            )
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
            data_format=str(raw.get("data-format", "auto")),  # type: ignore[arg-type]
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
        if self.data_format != "auto":
            out["data-format"] = self.data_format
        return out


def parse_teams(
    text: str, uncontrolled: Sequence[str] = (), max_train: int | None = None
) -> list[TeamConfig]:
    """Teams from ``"movie,tweet,legal=/data/legal.csv"``: a bundled task, or name=task/file.

    A team named in ``uncontrolled`` refuses masks (an uncontrolled branch).
    """
    teams: list[TeamConfig] = []
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        name, sep, task = item.partition("=")
        if not sep:
            name, task = item, item
        teams.append(
            TeamConfig(
                name=name.strip(),
                task=task.strip(),
                max_train=max_train,
                controlled=name.strip() not in set(uncontrolled),
            )
        )
    names = [t.name for t in teams]
    unknown = sorted(set(uncontrolled) - set(names))
    if unknown:
        raise ConfigError(f"uncontrolled names {unknown}, expected some of the teams {names}")
    if len(set(names)) != len(names):
        raise ConfigError(f"team names must be unique, found {names}; use name=task to rename")
    if not 2 <= len(teams) <= MAX_TEAMS:
        raise ConfigError(f"a simulation needs 2 to {MAX_TEAMS} teams, found {len(teams)}: {names}")
    return teams


def simulated_team(node_config: Mapping[str, Any], run_config: Mapping[str, Any]) -> TeamConfig:
    """The team a virtual SuperNode of a simulation plays: the ``partition-id``-th of the run
    config's ``teams`` (``uncontrolled`` names the teams that refuse masks)."""
    raw = str(run_config.get("teams", "")).strip()
    if not raw:
        raise ConfigError(
            "this SuperNode has no node config (no 'task') and the run config names no teams; "
            "in a simulation pass --run-config \"teams='movie,tweet,bbc'\", in a deployment "
            "start the SuperNode with --node-config \"team='movie' task='movie'\""
        )
    uncontrolled = [u.strip() for u in str(run_config.get("uncontrolled", "")).split(",")]
    teams = parse_teams(raw, [u for u in uncontrolled if u])
    pid = int(node_config["partition-id"])
    if not 0 <= pid < len(teams):
        raise ConfigError(
            f"SuperNode partition-id {pid} has no team: the run config's teams are "
            f"{[t.name for t in teams]}; set num-supernodes = {len(teams)}"
        )
    return teams[pid]
