"""Splitting a labelled training set across federated clients.

A partition is a :class:`Partition`: the clients' sample indices concatenated into one int64
array plus CSR offsets, so that 100,000 clients cost two arrays, not 100,000 small ones (the
shards split computes them on demand from its deal instead, :mod:`rayfl.data.compact`: ~8 bytes
per client whatever the shard size). Kinds:

- ``iid``: a random permutation cut into near-equal parts.
- ``dirichlet``: label skew, per class proportions over clients drawn from Dir(alpha)
  (Hsu, Qi and Brown 2019, "Measuring the Effects of Non-Identical Data Distribution for
  Federated Visual Classification", section 3; the split of NIID-Bench, Li et al. 2022).
- ``shards``: the pathological non-IID split of McMahan et al. 2017, "Communication-Efficient
  Learning of Deep Networks from Decentralized Data", section 3: sort by label, cut into shards,
  deal each client ``shards_per_client`` random shards (MNIST: 200 shards of 300, 2 per client).
- ``paper``: the AKAFL-RJ experiment (spec ``specs/akafl-rj.md`` section 7): each client gets
  1..classes_max random classes and samples_min..samples_max samples drawn from them; clients
  may share samples and some samples go unused.

Every kind draws from the generator it is given; :func:`partition` makes it as
``np.random.default_rng([seed, 1001])`` (stream 1001 = partition), so a seed fixes the split.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from rayfl import seeding
from rayfl.data.compact import EvenOffsets, ShardIndices
from rayfl.errors import DataError
from rayfl.registry import check_params, resolve
from rayfl.validation import check_int, fail, is_int, is_real

_DIRICHLET_DRAWS = 10  # full re-draws of the Dirichlet split before repairing empty clients


@dataclasses.dataclass(frozen=True, eq=False)
class Partition:
    """The clients' sample indices in CSR form; ``eq=False`` because it holds arrays.

    Example:
        >>> p = Partition.from_lists([np.array([4, 2]), np.array([7])])
        >>> p.offsets.tolist(), p.client(1).tolist(), p.sizes().tolist()
        ([0, 2, 3], [7], [2, 1])
    """

    # (total,) int64: the sample indices of client 0, then client 1, ...; or, for the shards
    # split, a ShardIndices that computes any slice of that array on demand
    indices: np.ndarray | ShardIndices
    # (num_clients + 1,) int64: client i holds indices[offsets[i]:offsets[i+1]] (EvenOffsets
    # when every client holds as many)
    offsets: np.ndarray | EvenOffsets

    def __post_init__(self) -> None:
        if isinstance(self.indices, ShardIndices) and isinstance(self.offsets, EvenOffsets):
            if self.offsets[-1] != self.indices.size:  # valid by construction otherwise
                raise ValueError("Partition.offsets must end at len(indices)")
            return
        for field in ("indices", "offsets"):
            a = np.asarray(getattr(self, field))
            if a.ndim != 1 or not (np.issubdtype(a.dtype, np.integer) or a.size == 0):
                raise ValueError(
                    f"Partition.{field} must be a 1-D integer array, got {a.dtype}{a.shape}"
                )
            object.__setattr__(self, field, np.ascontiguousarray(a, dtype=np.int64))
        idx, off = self.indices, self.offsets
        if off.size == 0 or off[0] != 0 or off[-1] != idx.size or np.any(np.diff(off) < 0):
            raise ValueError(
                f"Partition.offsets must start at 0, never decrease and end at len(indices)={idx.size}"
            )
        if idx.size and idx.min() < 0:
            raise ValueError("Partition.indices must be non-negative sample indices")

    @property
    def num_clients(self) -> int:
        """Number of clients (some may hold no samples only if built by hand)."""
        return self.offsets.size - 1

    def client(self, i: int) -> np.ndarray:
        """Sample indices of client ``i``: a ``(sizes()[i],)`` int64 view, do not modify."""
        i = operator.index(i)
        if not 0 <= i < self.num_clients:
            raise IndexError(f"client {i} out of range: the partition has {self.num_clients}")
        return self.indices[self.offsets[i] : self.offsets[i + 1]]

    def sizes(self) -> np.ndarray:
        """``(num_clients,)`` int64: the number of samples each client holds."""
        if isinstance(self.offsets, EvenOffsets):  # without the (N + 1,) offsets
            return np.full(self.num_clients, self.offsets.step, dtype=np.int64)
        return np.diff(self.offsets)

    @classmethod
    def from_lists(cls, parts: Sequence[np.ndarray]) -> Partition:
        """Builds a partition from one index array per client."""
        arrays = [np.asarray(p) for p in parts]
        arrays = [a.astype(np.int64) if a.size == 0 else a for a in arrays]  # [] is float64
        if any(a.ndim != 1 for a in arrays):
            raise ValueError("Partition.from_lists needs one 1-D index array per client")
        offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
        np.cumsum([a.size for a in arrays], out=offsets[1:])
        indices = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)
        return cls(indices=indices, offsets=offsets)


# --- the partitioners ---------------------------------------------------------------------------


def iid(labels: np.ndarray, num_clients: int, rng: np.random.Generator) -> Partition:
    """Shuffles all samples and cuts them into ``num_clients`` parts.

    Every sample is used exactly once; sizes differ by at most one (the first ``N % num_clients``
    clients hold one more).
    """
    labels = _as_labels(labels)
    num_clients = _check_num_clients(num_clients, labels.size, "iid")
    base, extra = divmod(labels.size, num_clients)
    sizes = np.full(num_clients, base, dtype=np.int64)
    sizes[:extra] += 1
    return Partition(indices=rng.permutation(labels.size), offsets=_offsets(sizes))


def dirichlet(
    labels: np.ndarray, num_clients: int, rng: np.random.Generator, alpha: float = 0.5
) -> Partition:
    """Label-skewed split: for each class, client shares ~ Dir(alpha, ..., alpha).

    The samples of class c (in random order) are cut at ``floor(cumsum(p_c) * n_c)``, so every
    sample is used exactly once. Small ``alpha`` (0.1) gives each client few classes; large
    ``alpha`` (100) is close to IID.

    Every client gets at least one sample: the whole split is re-drawn up to
    ``_DIRICHLET_DRAWS`` (10) times while some client is empty; if one still is (tiny alpha or
    ``num_clients`` close to ``N``), single random samples move from the largest clients to the
    empty ones, water-filling style: donors shrink towards a common level and keep at least one.
    Within a client, indices are grouped by class.
    """
    labels = _as_labels(labels)
    num_clients = _check_num_clients(num_clients, labels.size, "dirichlet")
    if not is_real(alpha) or not alpha > 0 or not math.isfinite(alpha):
        raise DataError(
            f"data.alpha={alpha} must be a positive number: use e.g. 0.1 for strong label skew "
            "or 100 for nearly IID clients"
        )
    _, class_sizes = np.unique(labels, return_counts=True)  # (C,)
    # Sample positions in class-major order, random within each class.
    shuffled = rng.permutation(labels.size)
    order = shuffled[np.argsort(labels[shuffled], kind="stable")]  # (N,)

    for _ in range(_DIRICHLET_DRAWS):
        shares = rng.dirichlet(np.full(num_clients, float(alpha)), size=class_sizes.size)  # (C, K)
        cuts = np.floor(np.cumsum(shares, axis=1) * class_sizes[:, None]).astype(np.int64)
        cuts = np.minimum(cuts, class_sizes[:, None])  # guard float round-up past n_c
        cuts[:, -1] = class_sizes  # the last client takes the rest of the class
        counts = np.diff(cuts, axis=1, prepend=0)  # (C, K) samples of class c for client k
        # owner[j]: the client of sample order[j] (blocks of clients inside each class block)
        owner = np.repeat(np.tile(np.arange(num_clients), class_sizes.size), counts.ravel())
        sizes = counts.sum(axis=0)
        if sizes.min() > 0:
            break
    else:
        owner = _fill_empty_clients(owner, sizes, rng)

    by_client = np.argsort(owner, kind="stable")
    sizes = np.bincount(owner, minlength=num_clients)
    return Partition(indices=order[by_client], offsets=_offsets(sizes))


def shards(
    labels: np.ndarray,
    num_clients: int,
    rng: np.random.Generator,
    shards_per_client: int = 2,
    shard_size: int | None = None,
) -> Partition:
    """McMahan et al. (2017) shards: sort by label, deal ``shards_per_client`` shards per client.

    The S = ``num_clients * shards_per_client`` shards start at evenly spaced positions of the
    label-sorted order (shard j at ``j * N // S``) and run ``shard_size`` entries, wrapping
    around at the end. The default ``shard_size`` is ``N // S``, so shards are disjoint and cover
    all but ``N mod S`` samples. A larger explicit ``shard_size`` makes neighbouring shards
    overlap (how 100,000 clients fit on 60,000 images); a smaller one leaves gaps, but every
    label range is still represented. All clients hold ``shards_per_client * shard_size``
    samples.
    """
    labels = _as_labels(labels)
    num_clients = _check_num_clients(num_clients, labels.size, "shards")
    shards_per_client = _check_positive_int(shards_per_client, "data.shards_per_client")
    num_shards = num_clients * shards_per_client
    if shard_size is None:
        shard_size = labels.size // num_shards
        if shard_size == 0:
            raise DataError(
                f"data.num_clients={num_clients} x data.shards_per_client={shards_per_client} "
                f"= {num_shards} shards exceed the {labels.size} samples: set data.shard_size "
                "(shards then wrap around and reuse samples) or lower data.num_clients"
            )
    shard_size = _check_positive_int(shard_size, "data.shard_size")
    by_label = np.argsort(labels, kind="stable")  # (N,)
    dealt = rng.permutation(num_shards)  # client i gets shards dealt[i*spc:(i+1)*spc]
    if num_shards < 2**31:
        dealt = dealt.astype(np.int32)  # 4 bytes a shard: what the partition keeps per client
    # Shard j starts at j * N // S and runs shard_size entries, wrapping: computed when a
    # client's slice is read (ShardIndices), not stored (S * shard_size int64 entries).
    indices = ShardIndices(by_label, dealt, shard_size)
    return Partition(indices, EvenOffsets(num_clients, shards_per_client * shard_size))


def paper(
    labels: np.ndarray,
    num_clients: int,
    rng: np.random.Generator,
    classes_max: int = 2,
    samples_min: int = 20,
    samples_max: int = 200,
) -> Partition:
    """The AKAFL-RJ experiment's split (spec section 7).

    Client i draws a number of classes m_i ~ U{1, ..., classes_max}, a set of m_i distinct classes
    uniformly at random, and a size s_i ~ U{samples_min, ..., samples_max}; it then gets s_i
    distinct samples drawn uniformly without replacement from the pool of its classes. Clients
    draw independently, so they may share samples and some samples are never used. Within a
    client, indices are in the order drawn (not sorted).

    Raises:
        DataError: ``classes_max`` is not in [1, number of classes], the size range is empty or
            below 1, or ``samples_max`` exceeds the smallest class (a one-class pool could not
            supply it).
    """
    labels = _as_labels(labels)
    num_clients = _check_num_clients(num_clients, labels.size, "paper")
    _, class_sizes = np.unique(labels, return_counts=True)  # (C,)
    num_classes = class_sizes.size
    classes_max, samples_min, samples_max = _check_paper_options(
        classes_max, samples_min, samples_max, class_sizes
    )

    # --- each client's classes: (K, classes_max) distinct class positions, first m_i used ---
    num_chosen = rng.integers(1, classes_max, endpoint=True, size=num_clients)  # (K,) m_i
    chosen = np.argsort(rng.random((num_clients, num_classes)), axis=1)[:, :classes_max]
    used = np.arange(classes_max)[None, :] < num_chosen[:, None]  # (K, classes_max) bool
    chosen_sizes = np.where(used, class_sizes[chosen], 0)  # (K, classes_max) samples per class
    pool_end = np.cumsum(chosen_sizes, axis=1)  # (K, classes_max): class j spans [end-size, end)

    # --- each client's samples: s_i distinct positions in its pool ---
    sizes = rng.integers(samples_min, samples_max, endpoint=True, size=num_clients)  # (K,) s_i
    owner = np.repeat(np.arange(num_clients), sizes)  # (T,) client of each drawn entry
    pos = _distinct_positions(owner, sizes, pool_end[:, -1], rng)  # (T,)

    # --- pool position -> sample index: class column j, then offset inside that class ---
    col = np.zeros(owner.size, dtype=np.int64)
    for j in range(classes_max - 1):  # few columns; (T,) work each
        col += pos >= pool_end[owner, j]
    class_pos = chosen[owner, col]  # (T,) position of the class in the sorted class list
    within = pos - (pool_end[owner, col] - chosen_sizes[owner, col])  # (T,) offset in the class
    by_label = np.argsort(labels, kind="stable")  # (N,) class-major sample indices
    class_start = _offsets(class_sizes)  # (C + 1,)
    indices = by_label[class_start[class_pos] + within]
    return Partition(indices=indices, offsets=_offsets(sizes))


def _check_paper_options(
    classes_max: int, samples_min: int, samples_max: int, class_sizes: np.ndarray
) -> tuple[int, int, int]:
    """The options of :func:`paper` as ints, checked against the ``(C,)`` class sizes."""
    num_classes = class_sizes.size
    classes_max = _check_positive_int(classes_max, "data.classes_max")
    if classes_max > num_classes:
        raise DataError(
            f"data.classes_max={classes_max} exceeds the {num_classes} classes in the labels: "
            f"set data.classes_max between 1 and {num_classes}"
        )
    samples_min = _check_positive_int(samples_min, "data.samples_min")
    samples_max = _check_positive_int(samples_max, "data.samples_max")
    if samples_min > samples_max:
        raise DataError(
            f"data.samples_min={samples_min} exceeds data.samples_max={samples_max}: "
            "set data.samples_min <= data.samples_max"
        )
    if samples_max > class_sizes.min():
        raise DataError(
            f"data.samples_max={samples_max} exceeds the {class_sizes.min()} samples of the "
            f"smallest class: set data.samples_max <= {class_sizes.min()}"
        )
    return classes_max, samples_min, samples_max


PARTITIONERS: dict[str, Callable[..., Partition]] = {
    "iid": iid,
    "dirichlet": dirichlet,
    "shards": shards,
    "paper": paper,
}

# The keyword options of `partition` that each kind takes.
_OPTIONS: dict[str, tuple[str, ...]] = {
    "iid": (),
    "dirichlet": ("alpha",),
    "shards": ("shards_per_client", "shard_size"),
    "paper": ("classes_max", "samples_min", "samples_max"),
}


def partition(
    labels: np.ndarray,
    kind: str,
    num_clients: int,
    seed: int,
    *,
    alpha: float = 0.5,
    shards_per_client: int = 2,
    shard_size: int | None = None,
    classes_max: int = 2,
    samples_min: int = 20,
    samples_max: int = 200,
    params: Mapping[str, Any] | None = None,
    columns: Mapping[str, np.ndarray] | None = None,
) -> Partition:
    """Splits ``labels``' samples across ``num_clients`` clients, reproducibly from ``seed``.

    Args:
        labels: ``(N,)`` integer class labels of the training set.
        kind: One of :data:`PARTITIONERS`: ``iid``, ``dirichlet``, ``shards``, ``paper``.
        num_clients: Number of clients, at least 1 (at most ``N`` for iid and dirichlet).
        seed: Experiment seed; the generator is ``np.random.default_rng([seed, 1001])``.
        alpha: Dirichlet concentration (dirichlet only).
        shards_per_client: Shards per client (shards only).
        shard_size: Samples per shard, default ``N // (num_clients * shards_per_client)``
            (shards only).
        classes_max: Most classes per client (paper only).
        samples_min: Fewest samples per client (paper only).
        samples_max: Most samples per client (paper only).
        columns: per-sample columns of the training set besides the labels (an ``hf:`` data
            set's ``keep_columns``), for a Flower Datasets partitioner (``kind`` ``flwr:...``).
        params: keyword arguments of a user partitioner (``kind`` an import path
            ``package.module:function`` to ``function(labels, num_clients, rng, **params)``
            returning a :class:`Partition` or one index array per client).

    Returns:
        The partition; options of other kinds are ignored.

    Example:
        >>> p = partition(np.array([0, 0, 1, 1, 2, 2]), "iid", num_clients=4, seed=0)
        >>> p.sizes().tolist()
        [2, 2, 1, 1]
    """
    rng = seeding.rng(seed, seeding.PARTITION)  # np.random.default_rng([seed, 1001])
    if isinstance(kind, str) and kind.startswith("flwr:"):
        from rayfl.data.flower import flwr_partition  # Flower Datasets: an optional extra

        return Partition.from_lists(
            flwr_partition(kind, labels, num_clients, seed, params, columns)
        )
    if kind not in PARTITIONERS:
        return _user_partition(labels, kind, num_clients, rng, params)
    options = dict(alpha=alpha, shards_per_client=shards_per_client, shard_size=shard_size)
    options.update(classes_max=classes_max, samples_min=samples_min, samples_max=samples_max)
    kwargs = {name: options[name] for name in _OPTIONS[kind]}
    return PARTITIONERS[kind](labels, num_clients, rng, **kwargs)


def _user_partition(
    labels: np.ndarray,
    kind: str,
    num_clients: int,
    rng: np.random.Generator,
    params: Mapping[str, Any] | None,
) -> Partition:
    """A user's partitioner, named by import path; its output checked like a shipped one's."""
    fn = resolve("data.partition", kind, PARTITIONERS, "partitioner")
    kwargs = check_params("data.partition_params", fn, params, engine_args=3)
    out = fn(labels, num_clients, rng, **kwargs)
    try:
        part = out if isinstance(out, Partition) else Partition.from_lists(list(out))
    except (TypeError, ValueError) as e:
        raise DataError(
            f"data.partition={kind!r} returned {type(out).__name__} ({e}): return a Partition "
            "or one array of sample indices per client"
        ) from None
    sizes = part.sizes()
    problem = None
    if part.num_clients != num_clients:
        problem = f"made {part.num_clients} clients, not data.num_clients={num_clients}"
    elif part.indices.size and part.indices.max() >= len(labels):
        problem = f"holds sample index {part.indices.max()}, past the {len(labels)} samples"
    elif (sizes == 0).any():
        problem = f"gives client {int(np.argmin(sizes))} no samples"
    if problem:
        raise DataError(f"data.partition={kind!r} {problem}: every client needs its own samples")
    return part


# --- helpers ------------------------------------------------------------------------------------


def _as_labels(labels: np.ndarray) -> np.ndarray:
    """Checks for a non-empty ``(N,)`` array of non-negative integer labels."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"labels must be a non-empty 1-D integer array, got {labels.dtype}{labels.shape}: "
            "partition the data set's y_train"
        )
    if labels.min() < 0:
        raise DataError("labels must be non-negative class ids: partition the data set's y_train")
    return labels


def _check_num_clients(num_clients: int, num_samples: int, kind: str) -> int:
    """Checks ``num_clients >= 1``, and ``<= num_samples`` where samples are not reused."""
    num_clients = _check_positive_int(num_clients, "data.num_clients")
    if kind in ("iid", "dirichlet") and num_clients > num_samples:
        raise DataError(
            f"data.num_clients={num_clients} exceeds the {num_samples} samples, so a {kind} "
            "partition would leave clients empty: lower data.num_clients, or use "
            "data.partition=shards with data.shard_size"
        )
    return num_clients


def _check_positive_int(value: int, field: str) -> int:
    """Returns ``value`` as an int if it is an integer >= 1, else a DataError naming ``field``."""
    fix = f"set {field} to a whole number >= 1"
    if not is_int(value):  # the data section's message names no type, unlike check_int's
        fail(field, value, "must be an integer", fix, DataError)
    # int(): a numpy value still prints as 0 in the message, not np.int64(0)
    return check_int(field, int(value), low=1, fix=fix, error=DataError)


def _offsets(sizes: np.ndarray) -> np.ndarray:
    """``(len(sizes) + 1,)`` int64 CSR offsets ``[0, cumsum(sizes)]``."""
    offsets = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    return offsets


def _fill_empty_clients(
    owner: np.ndarray, sizes: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Moves one random sample from the largest clients to each empty client.

    Args:
        owner: ``(N,)`` client of each sample.
        sizes: ``(K,)`` samples per client, ``sizes.sum() == N >= K``.
        rng: Generator for which samples and which donors.

    Returns:
        A new ``(N,)`` owner array in which every client holds at least one sample.
    """
    empty = np.flatnonzero(sizes == 0)  # (d,) the recipients
    need = empty.size

    def excess(level: int) -> int:  # samples the clients hold above `level`
        return int(np.maximum(sizes - level, 0).sum())

    # Largest level L >= 1 whose excess covers the need; excess(1) = N - (K - d) >= d as N >= K.
    lo, hi = 1, int(sizes.max())  # excess(lo) >= need > excess(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if excess(mid) >= need else (lo, mid)
    give = np.maximum(sizes - (lo + 1), 0)  # bring every donor down to L + 1 ...
    at_top = np.flatnonzero(sizes >= lo + 1)  # ... then some of them one further, to L
    give[rng.choice(at_top, size=need - int(give.sum()), replace=False)] += 1

    # Donate each donor's first `give` samples in a random order within the donor.
    grouped = np.lexsort((rng.random(owner.size), owner))  # (N,) sample positions by owner
    start = _offsets(sizes)[owner[grouped]]
    rank = np.arange(owner.size) - start  # rank of each sample within its owner
    donated = grouped[rank < give[owner[grouped]]]  # (d,)
    owner = owner.copy()
    owner[donated] = rng.permutation(empty)
    return owner


def _distinct_positions(
    owner: np.ndarray, sizes: np.ndarray, pool: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Draws, for each client i, ``sizes[i]`` distinct positions in ``[0, pool[i])``, uniformly.

    Args:
        owner: ``(T,)`` client of each entry, sorted, ``sizes[i]`` entries for client i.
        sizes: ``(K,)`` entries per client, ``sizes <= pool``.
        pool: ``(K,)`` pool size per client.
        rng: Generator.

    Returns:
        ``(T,)`` int64 positions. Clients whose draw takes more than half their pool use an exact
        per-client ``rng.choice``; the others draw with replacement and re-draw the duplicates
        until none are left (each re-draw succeeds with probability >= 1/2). The result is a
        uniform random subset, because the procedure treats all pool positions alike.
    """
    pos = rng.integers(0, pool[owner])  # (T,) with replacement
    starts = _offsets(sizes)
    for i in np.flatnonzero(2 * sizes > pool):  # rare: pools are usually much larger
        pos[starts[i] : starts[i + 1]] = rng.choice(pool[i], size=sizes[i], replace=False)
    active = np.ones(pool.size, dtype=bool)  # clients that may still hold duplicates
    while True:
        entries = np.flatnonzero(active[owner])  # (t,) entries of the active clients
        key = owner[entries] * pool.max() + pos[entries]  # sorts by client, then position
        by_key = np.argsort(key, kind="stable")
        dup = entries[by_key[1:][np.diff(key[by_key]) == 0]]  # later copies of a repeated value
        if dup.size == 0:
            return pos
        pos[dup] = rng.integers(0, pool[owner[dup]])
        active[:] = False
        active[owner[dup]] = True
