"""data.normalize: the default batch transform's input scaling (issue: the early phase's lag)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rayfl.clients.task import Normalizer
from rayfl.config import load_config
from rayfl.errors import ConfigError
from rayfl.runtime.data import input_scaling

MNIST = ((0.1307,), (0.3081,))


def test_unit_scaling_feeds_pixels_as_x_over_255():
    mean, std = input_scaling("unit", *MNIST)
    assert (mean, std) == ((0.0,), (1.0,))
    pixels = np.arange(256, dtype=np.uint8).reshape(1, 1, 16, 16)
    x = Normalizer(mean, std, torch.device("cpu"))(pixels)
    np.testing.assert_allclose(x.numpy(), pixels / 255.0, rtol=1e-6)


def test_standard_scaling_keeps_the_data_sets_constants():
    assert input_scaling("standard", *MNIST) == MNIST
    pixels = np.full((1, 1, 2, 2), 255, dtype=np.uint8)
    x = Normalizer(*MNIST, torch.device("cpu"))(pixels)
    np.testing.assert_allclose(x.numpy(), (1.0 - 0.1307) / 0.3081, rtol=1e-6)


def test_the_field_is_checked():
    assert load_config("random").data.normalize == "standard"  # the schema's default
    assert load_config("wkafl").data.normalize == "unit"  # the quick family, as the profiles
    assert load_config("akafl-rj-paper").data.normalize == "unit"  # the spec's profiles: x / 255
    assert load_config("kasync-stale").data.normalize == "unit"
    with pytest.raises(ConfigError, match="data.normalize='minmax'"):
        load_config("wkafl", ["data.normalize=minmax"])


def test_the_scaling_reaches_the_workers_and_the_evaluation(ray_session, tmp_path):
    import rayfl

    over = ["iterations=6", "eval.every=3", "client.num_workers=2"]
    runs = {
        n: rayfl.run("tiny", overrides=[*over, f"data.normalize={n}"], output=tmp_path / n)
        for n in ("standard", "unit")
    }
    assert runs["standard"].weights.tobytes() != runs["unit"].weights.tobytes()
    assert runs["unit"].run_dir.joinpath("config.yaml").read_text().count("normalize: unit") == 1
