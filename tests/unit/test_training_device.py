"""The training device setting: validated once (run side and node config), resolved to CUDA only
when present, autocast only on CUDA, the model back on CPU after training."""

from __future__ import annotations

import pytest
import torch

from medusa_fed.errors import ConfigError
from medusa_fed.team_config import TeamConfig
from medusa_fed.training.config import TrainConfig
from medusa_fed.training.device import autocast, check_device, resolve_device


@pytest.mark.parametrize("name", ["gpu", "cuda:", "cuda:x", "CPU", ""])
def test_a_bad_device_name_is_refused_with_one_line(name):
    with pytest.raises(ConfigError, match=r"device: expected one of auto, cpu, cuda, cuda:N"):
        check_device(name)
    with pytest.raises(ConfigError, match="device: expected"):
        TrainConfig(device=name)
    with pytest.raises(ConfigError, match="device: expected"):
        TeamConfig.from_node_config({"task": "movie", "device": name})


def test_node_config_carries_the_device_both_ways():
    team = TeamConfig.from_node_config({"task": "movie", "device": "cuda:1"})
    assert team.device == "cuda:1"
    assert TeamConfig.from_node_config(team.to_node_config()) == team
    assert "device" not in TeamConfig(name="m", task="movie").to_node_config()  # auto: default


def test_auto_picks_cuda_only_when_present(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match=r"device 'cuda': expected a CUDA device, found none"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda:1")


def test_no_autocast_on_cpu():
    a = torch.randn(4, 4)
    with autocast(torch.device("cpu")):
        assert (a @ a).dtype == torch.float32
