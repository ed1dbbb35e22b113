"""rayfl.exponential: numpy's seeded first draws, many at once, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from rayfl import exponential, seeding
from rayfl.config import load_config
from rayfl.speed import SpeedModel


def scalar(seed, stream, a, b):
    return np.array(
        [seeding.rng(seed, stream, int(i), int(j)).exponential() for i, j in zip(a, b, strict=True)]
    )


@pytest.mark.parametrize("seed", [0, 1, 2**32 - 1])
def test_bit_identical_to_the_scalar_draws(seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 2**32, size=4000)
    b = rng.integers(0, 5000, size=4000)
    a[:4], b[:4] = [0, 1, 2**32 - 1, 10_000_000], [0, 0, 2**32 - 1, 3]
    got = exponential.exponentials(seed, seeding.DURATION, a, b)
    assert got.dtype == np.float64
    assert np.array_equal(got, scalar(seed, seeding.DURATION, a, b))


def test_ids_and_seeds_past_one_word_take_the_scalar_way():
    a = np.array([2**32, 2**40 + 3, 5])
    b = np.array([0, 7, 2**33])
    assert np.array_equal(exponential.exponentials(9, 3, a, b), scalar(9, 3, a, b))
    assert np.array_equal(exponential.exponentials(2**33, 3, a, b), scalar(2**33, 3, a, b))


def test_tables_and_self_check():
    ke, we = exponential._tables()
    assert ke.shape == we.shape == (256,)
    assert (ke > 0).sum() >= 250  # nearly every strip has a fast path
    assert exponential._self_check()


def test_speed_model_durations_match_duration():
    cfg = load_config("wkafl", ["clock.straggler_fraction=0.2", "clock.bandwidth=1000"])
    speed = SpeedModel(cfg.clock, 2000, work=16, model_bytes=4000, seed=11)
    rng = np.random.default_rng(3)
    clients = rng.integers(0, 2000, size=1500)
    versions = rng.integers(0, 900, size=1500)
    want = [speed.duration(int(c), int(v)) for c, v in zip(clients, versions, strict=True)]
    assert np.array_equal(speed.durations(clients, versions), want)
    assert np.array_equal(
        speed.durations(clients[:10], 4), [speed.duration(int(c), 4) for c in clients[:10]]
    )
