"""The shards split computed on demand equals the stored array it replaces, byte for byte."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from rayfl import seeding
from rayfl.data import partition, shards
from rayfl.data.compact import EvenOffsets, ShardIndices


def stored_shards(labels, num_clients, seed, shards_per_client=2, shard_size=None):
    """The shards split as rayfl stored it before (every index materialised)."""
    rng = seeding.rng(seed, seeding.PARTITION)
    n, s = labels.size, num_clients * shards_per_client
    size = shard_size or n // s
    by_label = np.argsort(labels, kind="stable")
    starts = np.arange(s, dtype=np.int64) * n // s
    pos = (starts[:, None] + np.arange(size, dtype=np.int64)[None, :]) % n
    indices = by_label[pos[rng.permutation(s)].reshape(-1)]
    return indices, np.arange(num_clients + 1, dtype=np.int64) * (shards_per_client * size)


@pytest.mark.parametrize(
    ("num_clients", "options"),
    [(10, {}), (7, {"shards_per_client": 3}), (40, {"shard_size": 15}), (300, {"shard_size": 1})],
)
def test_same_indices_as_the_stored_split(num_clients, options):
    labels = np.random.default_rng(0).integers(0, 10, size=257)
    p = partition(labels, "shards", num_clients, seed=5, **options)
    indices, offsets = stored_shards(labels, num_clients, 5, **options)
    assert isinstance(p.indices, ShardIndices) and isinstance(p.offsets, EvenOffsets)
    assert np.array_equal(np.asarray(p.indices), indices)
    assert np.array_equal(np.asarray(p.offsets), offsets)
    for i in range(num_clients):  # the worker's view: indices[offsets[i]:offsets[i + 1]]
        got = p.indices[p.offsets[i] : p.offsets[i + 1]]
        assert got.dtype == np.int64 and np.array_equal(got, indices[offsets[i] : offsets[i + 1]])
        assert np.array_equal(p.client(i), got)


def test_indexing_like_an_array():
    labels = np.repeat(np.arange(4), 5)
    p = shards(labels, 3, np.random.default_rng(1), shard_size=4)
    full = np.asarray(p.indices)
    assert len(p.indices) == p.indices.size == full.size == 24 and p.indices.shape == (24,)
    assert p.indices[-1] == full[-1] and p.indices[5] == full[5]
    assert np.array_equal(p.indices[3:17:2], full[3:17:2])
    assert np.array_equal(p.indices[np.array([0, -2, 7])], full[np.array([0, -2, 7])])
    assert p.indices.min() == full.min() and p.indices.max() == full.max()
    assert p.indices.tolist() == full.tolist()
    assert np.array_equal(labels[p.indices], labels[full])  # numpy indexes with it
    with pytest.raises(IndexError):
        p.indices[24]
    assert p.offsets[-1] == 24 and p.offsets[1] == 8 and p.offsets.tolist() == [0, 8, 16, 24]
    assert np.array_equal(np.diff(p.offsets), p.sizes()) and p.sizes().tolist() == [8, 8, 8]


def test_holds_a_few_bytes_per_client():
    labels = np.repeat(np.arange(10), 100)
    p = shards(labels, 100_000, np.random.default_rng(0), shard_size=15)
    shipped = len(pickle.dumps((p.indices, p.offsets), protocol=5))
    assert shipped < 100_000 * 9  # the deal (int32, 2 shards a client) and the label order
    assert p.indices.dealt.dtype == np.int32
    assert p.indices.size == 100_000 * 30  # 24 MB as int64, had it been stored


def test_shard_indices_example():
    x = ShardIndices(np.array([2, 0, 1]), np.array([1, 0, 2]), shard_size=1)
    assert x[0:3].tolist() == [0, 2, 1]
