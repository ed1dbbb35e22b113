"""Config of synchronous rounds: mode, selection and incentive sections, and their bad values."""

from __future__ import annotations

import pytest

from rayfl.config import load_config
from rayfl.errors import ConfigError
from rayfl.selection import num_selected

SYNC = ["mode=sync", "data.num_clients=20"]


@pytest.mark.parametrize("preset", ["random", "pow-d", "incentive"])
def test_presets_are_sync_with_the_spec_defaults(preset):
    cfg = load_config(preset)
    assert cfg.mode == "sync"
    assert cfg.selection.kind == preset
    assert cfg.iterations == 60
    assert cfg.selection.k_fraction == 0.1 and cfg.selection.epochs == 1
    assert cfg.client.batch_size == 32
    assert cfg.incentive.budget == 10.0 and cfg.incentive.beta_s == 0.002
    assert cfg.incentive.delta_s == 0.95
    assert (cfg.incentive.delta_i_low, cfg.incentive.delta_i_high) == (0.94, 0.96)


def test_async_presets_are_unchanged():
    cfg = load_config("tiny")
    assert cfg.mode == "async" and cfg.selection.kind == "random"


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("incentive.budget=0", "incentive.budget=0.0 must be > 0"),
        ("incentive.budget=-5", "incentive.budget=-5.0 must be > 0"),
        ("incentive.delta_s=1.0", "incentive.delta_s=1.0 must be < 1"),
        ("incentive.delta_s=-0.1", "incentive.delta_s=-0.1 must be >= 0"),
        ("incentive.delta_i_low=0", "incentive.delta_i_low=0.0 must be > 0"),
        ("incentive.delta_i_high=1.2", "incentive.delta_i_high=1.2 must be < 1"),
        ("incentive.beta_s=0", "incentive.beta_s=0.0 must be > 0"),
        ("incentive.beta_s=-0.002", "incentive.beta_s=-0.002 must be > 0"),
        ("incentive.beta_i_low=0", "incentive.beta_i_low=0.0 must be > 0"),
        ("incentive.beta_i_high=0.001", "incentive.beta_i_high=0.001 is below"),
        ("incentive.max_steps=-1", "incentive.max_steps=-1 must be >= 0"),
        ("incentive.c_comm=-1", "incentive.c_comm=-1.0 must be >= 0"),
        ("selection.k_fraction=0", "selection.k_fraction=0.0 is outside (0, 1]"),
        ("selection.k_fraction=1.5", "selection.k_fraction=1.5 is outside (0, 1]"),
        ("selection.epochs=0", "selection.epochs=0 must be > 0"),
        ("selection.kind=best", "selection.kind='best' is not a known selector"),
        ("mode=batch", "mode='batch' is not one of"),
    ],
)
def test_bad_values_are_one_line_config_errors(override, needle):
    with pytest.raises(ConfigError) as e:
        load_config("incentive", [*SYNC, override])
    msg = str(e.value)
    assert needle in msg and "\n" not in msg
    assert ":" in msg.split(needle, 1)[1]  # names a fix after the colon


def test_pow_d_d_larger_than_the_clients_is_a_config_error():
    with pytest.raises(ConfigError, match=r"selection.d=21 exceeds data.num_clients=20.*d <= 20"):
        load_config("pow-d", [*SYNC, "selection.d=21"])


def test_pow_d_d_below_m_is_a_config_error():
    with pytest.raises(ConfigError, match=r"selection.d=3 is below M=4.*use d >= 4"):
        load_config("pow-d", [*SYNC, "selection.k_fraction=0.2", "selection.d=3"])


def test_k_times_n_below_one_selects_one_client():
    cfg = load_config("random", [*SYNC, "selection.k_fraction=0.01"])  # K * n = 0.2
    assert num_selected(cfg.selection.k_fraction, cfg.data.num_clients) == 1


def test_sync_mode_ignores_aggregation_k():
    # aggregation.k belongs to the K-async engine; a sync run with fewer clients than it is fine
    cfg = load_config("random", ["data.num_clients=5", "aggregation.k=10"])
    assert cfg.data.num_clients == 5
    with pytest.raises(ConfigError, match="aggregation.k=10 exceeds"):
        load_config("random", ["mode=async", "data.num_clients=5", "aggregation.k=10"])
