"""Tests of rayfl.data.partition: the CSR container, each partitioner, seeding, properties."""

from __future__ import annotations

import importlib
import itertools
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rayfl.data import PARTITIONERS, Partition, dirichlet, iid, load_bundled_mnist, paper
from rayfl.data import partition as make_partition
from rayfl.errors import ConfigError, DataError

# `rayfl.data.partition` is the function (re-exported); the module is reached by its full name.
partition_module = importlib.import_module("rayfl.data.partition")


@pytest.fixture(scope="module")
def mnist_labels() -> np.ndarray:
    return load_bundled_mnist().y_train


def balanced_labels(num_classes: int, per_class: int, seed: int = 0) -> np.ndarray:
    """``num_classes * per_class`` labels, each class ``per_class`` times, in random order."""
    labels = np.repeat(np.arange(num_classes), per_class)
    return np.random.default_rng([seed, 7]).permutation(labels)


def classes_per_client(p: Partition, labels: np.ndarray) -> np.ndarray:
    return np.array([np.unique(labels[p.client(i)]).size for i in range(p.num_clients)])


def assert_valid_csr(p: Partition, num_samples: int) -> None:
    assert p.indices.dtype == np.int64 and p.offsets.dtype == np.int64
    assert p.offsets[0] == 0 and p.offsets[-1] == p.indices.size
    assert np.all(np.diff(p.offsets) >= 0)
    assert p.sizes().sum() == p.indices.size
    if p.indices.size:
        assert p.indices.min() >= 0 and p.indices.max() < num_samples


def assert_each_sample_once(p: Partition, num_samples: int) -> None:
    assert np.array_equal(np.sort(p.indices), np.arange(num_samples))


# --- the container ---


def test_partition_from_lists_by_hand() -> None:
    p = Partition.from_lists([np.array([4, 2]), np.array([], dtype=np.int64), [7]])
    assert p.num_clients == 3
    assert p.indices.tolist() == [4, 2, 7]
    assert p.offsets.tolist() == [0, 2, 2, 3]
    assert p.sizes().tolist() == [2, 0, 1]
    assert (
        p.client(0).tolist() == [4, 2]
        and p.client(1).tolist() == []
        and p.client(2).tolist() == [7]
    )
    assert p.client(np.int64(2)).tolist() == [7]
    with pytest.raises(IndexError):
        p.client(3)
    with pytest.raises(IndexError):
        p.client(-1)
    empty = Partition.from_lists([])
    assert empty.num_clients == 0 and empty.indices.size == 0


@pytest.mark.parametrize(
    ("indices", "offsets"),
    [
        ([1, 2, 3], [0, 2]),  # does not end at len(indices)
        ([1, 2, 3], [1, 3]),  # does not start at 0
        ([1, 2, 3], [0, 2, 1, 3]),  # decreasing
        ([1.0, 2.0], [0, 2]),  # not integers
        ([-1, 2], [0, 2]),  # negative index
    ],
)
def test_partition_rejects_malformed_csr(indices: list, offsets: list) -> None:
    with pytest.raises(ValueError):
        Partition(indices=np.array(indices), offsets=np.array(offsets))


# --- iid ---


def test_iid_sizes_and_coverage() -> None:
    labels = balanced_labels(5, 10)  # 50 samples
    p = make_partition(labels, "iid", num_clients=7, seed=3)
    assert p.sizes().tolist() == [8, 7, 7, 7, 7, 7, 7]
    assert_each_sample_once(p, 50)


def test_iid_on_mnist_mixes_classes(mnist_labels: np.ndarray) -> None:
    p = make_partition(mnist_labels, "iid", num_clients=100, seed=0)
    assert np.all(p.sizes() == 600)
    assert_each_sample_once(p, 60000)
    assert classes_per_client(p, mnist_labels).min() == 10


# --- dirichlet ---


def test_dirichlet_alpha_controls_label_skew(mnist_labels: np.ndarray) -> None:
    skewed = make_partition(mnist_labels, "dirichlet", num_clients=100, seed=0, alpha=0.05)
    mixed = make_partition(mnist_labels, "dirichlet", num_clients=100, seed=0, alpha=100.0)
    for p in (skewed, mixed):
        assert_each_sample_once(p, 60000)
        assert p.sizes().min() >= 1
    skewed_classes = classes_per_client(skewed, mnist_labels).mean()
    mixed_classes = classes_per_client(mixed, mnist_labels).mean()
    assert skewed_classes < 4 and mixed_classes > 9.5, (skewed_classes, mixed_classes)


def test_dirichlet_fills_empty_clients() -> None:
    # As many clients as samples and a tiny alpha: re-draws cannot avoid empty clients, so the
    # repair step must move samples, leaving exactly one per client.
    labels = balanced_labels(4, 50)  # 200 samples
    p = make_partition(labels, "dirichlet", num_clients=200, seed=1, alpha=0.001)
    assert np.all(p.sizes() == 1)
    assert_each_sample_once(p, 200)
    p = make_partition(labels, "dirichlet", num_clients=150, seed=2, alpha=0.001)
    assert p.sizes().min() >= 1
    assert_each_sample_once(p, 200)


def test_fill_empty_clients_takes_from_the_largest() -> None:
    # sizes [5, 0, 3, 0, 0, 1]: three empty clients need one sample each. Water-filling takes
    # 2 from client 0 (down to 3), then 1 more from client 0 or 2 (level 2); client 5 keeps its 1.
    owner = np.array([0, 0, 0, 0, 0, 2, 2, 2, 5])
    sizes = np.bincount(owner, minlength=6)
    for seed in range(20):
        new = partition_module._fill_empty_clients(owner, sizes, np.random.default_rng(seed))
        new_sizes = np.bincount(new, minlength=6).tolist()
        assert new_sizes in ([2, 1, 3, 1, 1, 1], [3, 1, 2, 1, 1, 1]), new_sizes
        assert new[8] == 5  # the one-sample client is no donor
        moved = owner != new
        assert sorted(new[moved].tolist()) == [1, 3, 4]


@pytest.mark.parametrize("alpha", [0.0, -1.0, float("nan"), float("inf")])
def test_dirichlet_rejects_bad_alpha(alpha: float) -> None:
    with pytest.raises(DataError, match="data.alpha"):
        make_partition(balanced_labels(2, 10), "dirichlet", num_clients=2, seed=0, alpha=alpha)


# --- shards ---


def test_shards_aligned_with_classes() -> None:
    # 10 classes x 600 samples, 100 clients x 2 shards of 30: every shard is one class.
    labels = balanced_labels(10, 600)
    p = make_partition(labels, "shards", num_clients=100, seed=0, shards_per_client=2)
    assert np.all(p.sizes() == 60)
    assert_each_sample_once(p, 6000)
    counts = classes_per_client(p, labels)
    assert counts.max() <= 2 and counts.min() >= 1


def test_shards_on_mnist(mnist_labels: np.ndarray) -> None:
    # McMahan et al. (2017): 200 shards of 300 sorted samples, 2 per client.
    p = make_partition(mnist_labels, "shards", num_clients=100, seed=0)
    assert np.all(p.sizes() == 600)
    assert_each_sample_once(p, 60000)
    for i in range(p.num_clients):
        for shard in p.client(i).reshape(2, 300):
            shard_labels = mnist_labels[shard]
            assert np.all(np.diff(shard_labels) >= 0)  # a run of the label-sorted order
            assert np.unique(shard_labels).size <= 2  # MNIST class sizes are not multiples of 300
    assert classes_per_client(p, mnist_labels).max() <= 4


def test_shards_scale_to_100k_clients(mnist_labels: np.ndarray) -> None:
    p = make_partition(mnist_labels, "shards", num_clients=100_000, seed=0, shard_size=1)
    assert p.num_clients == 100_000
    assert np.all(p.sizes() == 2)
    # 200,000 one-sample shards spaced evenly over 60,000 sorted samples: each used 3 or 4 times.
    uses = np.bincount(p.indices, minlength=60000)
    assert uses.min() == 3 and uses.max() == 4 and uses.sum() == 200_000


def test_shards_explicit_size_starts_evenly_spaced() -> None:
    labels = np.array([2, 0, 1, 0, 2])  # sorted order (stable): 1, 3, 2, 0, 4
    p = make_partition(labels, "shards", num_clients=2, seed=0, shards_per_client=2, shard_size=2)
    # 4 shards start at j * 5 // 4 = 0, 1, 2, 3 of the sorted order and run 2 entries.
    expected = [(1, 3), (3, 2), (2, 0), (0, 4)]
    shards = sorted(tuple(p.indices[j : j + 2]) for j in range(0, 8, 2))
    assert shards == sorted(expected)
    assert p.sizes().tolist() == [4, 4]


def test_shards_small_explicit_size_still_spans_every_label(mnist_labels: np.ndarray) -> None:
    p = make_partition(mnist_labels, "shards", num_clients=1000, seed=0, shard_size=15)
    assert set(np.unique(mnist_labels[p.indices])) == set(range(10))
    assert classes_per_client(p, mnist_labels).max() <= 4


def test_shards_zero_default_size_raises(mnist_labels: np.ndarray) -> None:
    with pytest.raises(DataError, match="data.shard_size"):
        make_partition(mnist_labels, "shards", num_clients=100_000, seed=0)


@pytest.mark.parametrize(("field", "value"), [("shard_size", 0), ("shards_per_client", 0)])
def test_shards_rejects_bad_options(field: str, value: int) -> None:
    with pytest.raises(DataError, match=f"data.{field}"):
        make_partition(balanced_labels(2, 10), "shards", num_clients=2, seed=0, **{field: value})


# --- paper (AKAFL-RJ spec section 7) ---


def test_paper_bounds_on_mnist(mnist_labels: np.ndarray) -> None:
    p = make_partition(mnist_labels, "paper", num_clients=2000, seed=0)
    sizes = p.sizes()
    assert sizes.min() == 20 and sizes.max() == 200  # inclusive range, both ends reached
    counts = classes_per_client(p, mnist_labels)
    assert set(counts.tolist()) == {1, 2}
    for i in range(p.num_clients):
        assert np.unique(p.client(i)).size == sizes[i]  # distinct within a client
    # Clients draw independently: samples are shared and some are unused.
    uses = np.bincount(p.indices, minlength=60000)
    assert uses.max() > 1 and (uses == 0).any()


def test_paper_wider_class_range(mnist_labels: np.ndarray) -> None:
    p = make_partition(
        mnist_labels, "paper", 500, seed=1, classes_max=5, samples_min=1, samples_max=50
    )
    assert p.sizes().min() >= 1 and p.sizes().max() <= 50
    counts = classes_per_client(p, mnist_labels)
    # Clients with few samples may not show all their classes; none shows more than 5.
    assert counts.min() >= 1 and counts.max() == 5


@pytest.mark.parametrize(("subset_size", "pool_size"), [(2, 4), (3, 4)])
def test_paper_draws_uniform_subsets(subset_size: int, pool_size: int) -> None:
    # One class of `pool_size` samples, every client takes `subset_size` of them: each subset
    # must be equally likely. (2 of 4 uses the re-draw path, 3 of 4 the exact-choice path.)
    labels = np.zeros(pool_size, dtype=np.int64)
    num_clients = 6000
    p = make_partition(
        labels,
        "paper",
        num_clients,
        seed=0,
        classes_max=1,
        samples_min=subset_size,
        samples_max=subset_size,
    )
    subsets = Counter(tuple(sorted(p.client(i).tolist())) for i in range(num_clients))
    expected_subsets = set(itertools.combinations(range(pool_size), subset_size))
    assert set(subsets) == expected_subsets
    mean = num_clients / len(expected_subsets)
    sd = np.sqrt(num_clients * (1 / len(expected_subsets)) * (1 - 1 / len(expected_subsets)))
    assert all(abs(n - mean) < 5 * sd for n in subsets.values()), subsets


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"classes_max": 0}, "data.classes_max"),
        ({"classes_max": 11}, "data.classes_max"),
        ({"samples_min": 0}, "data.samples_min"),
        ({"samples_min": 50, "samples_max": 40}, "data.samples_min"),
        ({"samples_max": 5000}, "data.samples_max"),  # more than the smallest class holds
    ],
)
def test_paper_rejects_bad_options(mnist_labels: np.ndarray, options: dict, field: str) -> None:
    with pytest.raises(DataError, match=field) as info:
        make_partition(mnist_labels[:10000], "paper", 10, seed=0, **options)
    assert "\n" not in str(info.value)


# --- common ---


@pytest.mark.parametrize("kind", sorted(PARTITIONERS))
def test_contract_every_kind(kind: str) -> None:
    labels = balanced_labels(10, 300)  # 3000 samples
    p = make_partition(labels, kind, num_clients=50, seed=4)
    assert p.num_clients == 50
    assert_valid_csr(p, labels.size)
    assert p.sizes().min() >= 1
    # Same seed, same partition; it is the kind's function on default_rng([seed, 1001]).
    again = make_partition(labels, kind, num_clients=50, seed=4)
    direct = PARTITIONERS[kind](labels, 50, np.random.default_rng([4, 1001]))
    for q in (again, direct):
        assert np.array_equal(q.indices, p.indices) and np.array_equal(q.offsets, p.offsets)
    other = make_partition(labels, kind, num_clients=50, seed=5)
    assert not np.array_equal(other.indices, p.indices)


def test_num_clients_validation() -> None:
    labels = balanced_labels(2, 10)  # 20 samples
    for kind in PARTITIONERS:
        with pytest.raises(DataError, match="data.num_clients"):
            make_partition(labels, kind, num_clients=0, seed=0)
    for kind in ("iid", "dirichlet"):
        with pytest.raises(DataError, match="data.num_clients=21 exceeds"):
            make_partition(labels, kind, num_clients=21, seed=0)
    # Kinds that reuse samples accept more clients than samples.
    assert (
        make_partition(labels, "paper", 21, seed=0, samples_min=1, samples_max=5).num_clients == 21
    )


def test_unknown_kind_and_bad_labels() -> None:
    with pytest.raises(ConfigError, match="data.partition='pathological' is not a known"):
        make_partition(balanced_labels(2, 10), "pathological", num_clients=2, seed=0)
    for labels in (np.array([0.5, 1.0]), np.zeros((2, 2), dtype=np.int64), np.array([0, -1])):
        with pytest.raises(DataError, match="labels"):
            make_partition(labels, "iid", num_clients=1, seed=0)


# --- properties ---

label_arrays = st.lists(st.integers(0, 9), min_size=1, max_size=300).map(np.array)


@settings(max_examples=60, deadline=None)
@given(labels=label_arrays, data=st.data())
def test_iid_property(labels: np.ndarray, data: st.DataObject) -> None:
    num_clients = data.draw(st.integers(1, labels.size))
    seed = data.draw(st.integers(0, 2**32 - 1))
    p = iid(labels, num_clients, np.random.default_rng([seed, 1001]))
    assert p.num_clients == num_clients
    assert_valid_csr(p, labels.size)
    assert_each_sample_once(p, labels.size)
    assert p.sizes().max() - p.sizes().min() <= 1


@settings(max_examples=60, deadline=None)
@given(labels=label_arrays, data=st.data())
def test_dirichlet_property(labels: np.ndarray, data: st.DataObject) -> None:
    num_clients = data.draw(st.integers(1, labels.size))
    alpha = data.draw(st.floats(1e-3, 1e3))
    p = dirichlet(
        labels, num_clients, np.random.default_rng([data.draw(st.integers(0, 99))]), alpha
    )
    assert p.num_clients == num_clients
    assert_valid_csr(p, labels.size)
    assert_each_sample_once(p, labels.size)
    assert p.sizes().min() >= 1


@settings(max_examples=60, deadline=None)
@given(labels=label_arrays, data=st.data())
def test_shards_property(labels: np.ndarray, data: st.DataObject) -> None:
    num_clients = data.draw(st.integers(1, 400))
    per_client = data.draw(st.integers(1, 4))
    shard_size = data.draw(st.none() | st.integers(1, 20))
    if shard_size is None and labels.size < num_clients * per_client:
        with pytest.raises(DataError, match="data.shard_size"):
            make_partition(labels, "shards", num_clients, 0, shards_per_client=per_client)
        return
    p = make_partition(
        labels, "shards", num_clients, 0, shards_per_client=per_client, shard_size=shard_size
    )
    size = shard_size or labels.size // (num_clients * per_client)
    assert_valid_csr(p, labels.size)
    assert np.all(p.sizes() == per_client * size)
    if shard_size is None:  # default size: disjoint shards
        assert np.unique(p.indices).size == p.indices.size


@settings(max_examples=60, deadline=None)
@given(labels=label_arrays, data=st.data())
def test_paper_property(labels: np.ndarray, data: st.DataObject) -> None:
    _, class_sizes = np.unique(labels, return_counts=True)
    num_clients = data.draw(st.integers(1, 300))
    classes_max = data.draw(st.integers(1, class_sizes.size))
    samples_max = data.draw(st.integers(1, int(class_sizes.min())))
    samples_min = data.draw(st.integers(1, samples_max))
    p = paper(
        labels,
        num_clients,
        np.random.default_rng([data.draw(st.integers(0, 99))]),
        classes_max,
        samples_min,
        samples_max,
    )
    assert p.num_clients == num_clients
    assert_valid_csr(p, labels.size)
    sizes = p.sizes()
    assert sizes.min() >= samples_min and sizes.max() <= samples_max
    for i in range(num_clients):
        client = p.client(i)
        assert np.unique(client).size == client.size
        assert 1 <= np.unique(labels[client]).size <= classes_max


# --- a user's partitioner, by import path ---

USER_PARTITIONERS = '''
import numpy as np

def by_label(labels, num_clients, rng, per_client: int = 3):
    """Client i holds per_client samples of label i % 10 (a pathological split)."""
    out = []
    for i in range(num_clients):
        pool = np.flatnonzero(labels == i % 10)
        out.append(rng.choice(pool, size=per_client, replace=False))
    return out

def too_few(labels, num_clients, rng):
    return [np.arange(3)] * (num_clients - 1)

def empty_client(labels, num_clients, rng):
    return [np.arange(3)] * (num_clients - 1) + [np.zeros(0, np.int64)]

def past_the_end(labels, num_clients, rng):
    return [np.array([len(labels)])] * num_clients
'''


@pytest.fixture
def user_partitioners(tmp_path, monkeypatch):
    (tmp_path / "user_parts.py").write_text(USER_PARTITIONERS)
    monkeypatch.syspath_prepend(str(tmp_path))


def test_user_partitioner_by_import_path(user_partitioners) -> None:
    labels = balanced_labels(10, 20)
    p = make_partition(
        labels, "user_parts:by_label", num_clients=4, seed=0, params={"per_client": 5}
    )
    assert p.sizes().tolist() == [5, 5, 5, 5]
    assert [set(labels[p.client(i)].tolist()) for i in range(4)] == [{0}, {1}, {2}, {3}]
    again = make_partition(
        labels, "user_parts:by_label", num_clients=4, seed=0, params={"per_client": 5}
    )
    np.testing.assert_array_equal(p.indices, again.indices)  # its rng is the run's seeded one


@pytest.mark.parametrize(
    ("kind", "params", "error", "message"),
    [
        ("user_parts:by_label", {"per_clinet": 2}, ConfigError, "did you mean 'per_client'"),
        ("user_parts:by_label", {"per_client": "x"}, ConfigError, "partition_params.per_client"),
        ("user_parts:nope", {}, ConfigError, "has no attribute 'nope'"),
        ("no_such_pkg_xyz:split", {}, ConfigError, "cannot import 'no_such_pkg_xyz'"),
        ("user_parts:too_few", {}, DataError, "made 3 clients, not data.num_clients=4"),
        ("user_parts:empty_client", {}, DataError, "gives client 3 no samples"),
        ("user_parts:past_the_end", {}, DataError, "past the 200 samples"),
    ],
)
def test_user_partitioner_errors_name_the_field(user_partitioners, kind, params, error, message):
    with pytest.raises(error, match=message) as info:
        make_partition(balanced_labels(10, 20), kind, num_clients=4, seed=0, params=params)
    assert "\n" not in str(info.value)
