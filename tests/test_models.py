"""Model factories and the flat-vector view (client updates: tests/clients/test_local.py)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from rayfl.config import ModelConfig
from rayfl.errors import ConfigError
from rayfl.models import build_model, get_flat, num_parameters, set_flat


def test_paper_cnn_matches_the_spec():
    model = build_model(ModelConfig("paper_cnn"), (1, 28, 28), 10, seed=0)
    # conv1 32*25+32, conv2 64*32*25+64, fc1 1024*512+512, fc2 512*10+10
    assert num_parameters(model) == 832 + 51264 + 524800 + 5130 == 582026
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    cifar = build_model(ModelConfig("paper_cnn"), (3, 32, 32), 10, seed=0)
    assert cifar(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_mlp_and_seeded_init():
    cfg = ModelConfig("mlp", hidden=(16, 8))
    a, b = build_model(cfg, (1, 4, 4), 3, 7), build_model(cfg, (1, 4, 4), 3, 7)
    c = build_model(cfg, (1, 4, 4), 3, 8)
    assert num_parameters(a) == 16 * 16 + 16 + 16 * 8 + 8 + 8 * 3 + 3
    assert np.array_equal(get_flat(a), get_flat(b))
    assert not np.array_equal(get_flat(a), get_flat(c))


def test_seeded_init_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    build_model(ModelConfig("mlp"), (1, 4, 4), 3, 0)
    assert torch.rand(1) == expected


def test_user_factory_by_import_path(tmp_path, monkeypatch):
    (tmp_path / "my_models.py").write_text(
        "import torch.nn as nn\n"
        "def make_net(input_shape, num_classes, width=5):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(16, width), nn.Linear(width, num_classes))\n"
        "not_callable = 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    model = build_model(ModelConfig("my_models:make_net", kwargs={"width": 7}), (1, 4, 4), 3, 0)
    assert num_parameters(model) == 16 * 7 + 7 + 7 * 3 + 3
    with pytest.raises(ConfigError, match="not a callable factory"):
        build_model(ModelConfig("my_models:not_callable"), (1, 4, 4), 3, 0)
    with pytest.raises(ConfigError, match="cannot import"):
        build_model(ModelConfig("no_such_module_xyz:f"), (1, 4, 4), 3, 0)
    with pytest.raises(ConfigError, match="model.kwargs.depth is not a parameter of make_net"):
        build_model(ModelConfig("my_models:make_net", kwargs={"depth": 2}), (1, 4, 4), 3, 0)
    sys.modules.pop("my_models", None)


def test_flat_round_trip():
    model = build_model(ModelConfig("mlp", hidden=(5,)), (1, 2, 2), 2, 0)
    w = np.arange(num_parameters(model), dtype=np.float32)
    w.setflags(write=False)  # as it arrives from the object store
    set_flat(model, w)
    assert np.array_equal(get_flat(model), w)


def test_set_flat_copies_and_never_aliases_the_source():
    model = build_model(ModelConfig("mlp", hidden=(3,)), (1, 2, 2), 2, 0)
    w = np.zeros(num_parameters(model), dtype=np.float32)
    set_flat(model, w)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    assert not w.any()  # local SGD steps must not write into the received weights
