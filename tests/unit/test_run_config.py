"""Run and team configuration: every bad value fails at start with a message naming the fix."""

from __future__ import annotations

import pytest

from medusa_fed.errors import ConfigError
from medusa_fed.run_config import MergeChoice, RunConfig
from medusa_fed.team_config import TeamConfig


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"merge": "average"}, "unknown merge method 'average'"),
        ({"compare": "ties,bogus"}, "unknown merge method 'bogus'"),
        ({"merge": "ties:alpha=3"}, "key one of scale, density"),
        ({"merge": "ties:density=x"}, "value is not a number"),
        ({"probe-density": 0}, "probe-density must be in (0, 1]"),
        ({"probe-density": 1.5}, "probe-density must be in (0, 1]"),
        ({"method": "qlora"}, "method: expected one of full, lora, ia3"),
        ({"assignment": "greedy"}, "assignment: expected one of"),
        ({"min-teams": 0}, "min-teams must be >= 1"),
        ({"epochs": -1}, "epochs must be > 0"),
        ({"eval-before": "maybe"}, "expected true or false"),
        ({"batch-size": "many"}, "batch-size: cannot use 'many'"),
        ({"probe_density": 0.2}, "unknown run-config keys ['probe_density']"),
        ({"merge": "ties", "compare": "linear"}, "'compare' and 'federated' are only"),
        ({"masked-lr-scale": 0}, "masked-lr-scale must be > 0 and finite"),
        ({"masked-lr-scale": "nan"}, "masked-lr-scale: expected a finite number, found nan"),
        ({"probe-scores": "grad"}, "probe-scores: expected one of delta, fisher, found 'grad'"),
        ({"probe-scores": "fisher", "dp-clip": 1.0}, "probe-scores = fisher: expected dp-clip = 0"),
        ({"masked-lr-choices": "1|x"}, "masked-lr-choices: expected numbers separated by '|'"),
        ({"masked-lr-choices": "1|nan"}, "masked-lr-choices: expected every scale finite and > 0"),
        ({"masked-lr-choices": "0|2"}, "masked-lr-choices: expected every scale finite and > 0"),
        ({"masked-lr-choices": "2|2.0"}, "expected 1 to 8 distinct scales, found 2 in '2|2.0'"),
        ({"lr": "nan"}, "lr: expected a finite number, found nan"),
        ({"epochs": "inf"}, "epochs: expected a finite number, found inf"),
        ({"refit-lr": "nan"}, "refit-lr: expected a finite number, found nan"),
        ({"stage-timeout-s": "-inf"}, "stage-timeout-s: expected a finite number, found -inf"),
        ({"federated": "ties:density=0.2|0.5"}, "expected one value per setting"),
        ({"federated": "medusa"}, "expected post-hoc merge methods"),
        ({"merge": "ties", "federated": "linear"}, "'compare' and 'federated' are only"),
        ({"compare": "ties:density=2"}, "density must be in (0, 1], found 2"),
    ],
)
def test_bad_run_config_names_the_key_and_the_expectation(raw, message):
    with pytest.raises(ConfigError) as err:
        RunConfig.from_mapping(raw)
    assert message in str(err.value)


def test_run_config_round_trips_through_its_mapping():
    cfg = RunConfig.from_mapping(
        {
            "merge": "medusa",
            "compare": "ties:density=0.3,dare_ties",
            "assignment": "balanced",
            "eval-before": "false",
            "seed": "7",
        }
    )
    assert RunConfig.from_mapping(cfg.to_mapping()) == cfg
    assert cfg.compare[0] == MergeChoice("ties", (("density", (0.3,)),))
    assert cfg.compare[0].label == "ties:density=0.3"
    assert cfg.eval_before is False and cfg.seed == 7 and cfg.needs_free_branches


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({}, "node config has no 'task'"),
        ({"task": "movie", "colour": "red"}, "unknown node-config keys ['colour']"),
        ({"task": "movie", "controlled": "perhaps"}, "controlled: expected true or false"),
        ({"task": "movie", "max-train": "lots"}, "max-train: expected an integer"),
        ({"task": "movie", "team": "a b"}, "team name must be letters"),
    ],
)
def test_bad_node_config_is_refused(raw, message):
    with pytest.raises(ConfigError) as err:
        TeamConfig.from_node_config(raw)
    assert message in str(err.value)


def test_node_config_controlled_false_is_the_teams_own_choice():
    team = TeamConfig.from_node_config(
        {"task": "/data/legal.csv", "controlled": "false", "partition-id": 0, "num-partitions": 2}
    )
    assert team.name == "legal" and team.controlled is False
    assert TeamConfig.from_node_config(team.to_node_config()) == team
