"""Partitions computed on demand: a client's sample indices derived from a few small arrays.

The shards split (McMahan et al. 2017) deals S = N_clients * shards_per_client shards, each a run
of ``shard_size`` positions in the label-sorted order. Stored as concatenated int64 indices it
costs ``8 * shards_per_client * shard_size`` bytes per client (2.4 GB at 10,000,000 clients of
30 samples), held by the driver and again in the object store. :class:`ShardIndices` keeps only
the deal (one int32 per shard) and the label order, and computes any slice of the same
concatenated array when it is read: a worker reads one client's 30 indices per job.
:class:`EvenOffsets` are CSR offsets ``i * step`` without the ``(N + 1,)`` array.

Both are read-only array-likes: ``x[a:b]``, ``x[i]``, ``len``, ``size``, ``shape``, ``dtype``,
``min``/``max``/``tolist``, and ``np.asarray(x)`` materialises the whole array (tests, user code).
They pickle as their small arrays, so Ray maps them zero-copy like plain arrays.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np

_CHUNK = 1 << 22  # entries per pass when materialising: bounds the temporaries


class ShardIndices:
    """``by_label[(start(dealt[p // size]) + p % size) % n]`` for each position p, where
    ``start(s) = s * n // num_shards``: the shards split's concatenated indices.

    Example:
        >>> x = ShardIndices(np.array([2, 0, 1]), np.array([1, 0, 2]), shard_size=1)
        >>> x[0:3].tolist(), np.asarray(x).tolist()
        ([0, 2, 1], [0, 2, 1])
    """

    dtype = np.dtype(np.int64)
    ndim = 1

    def __init__(self, by_label: np.ndarray, dealt: np.ndarray, shard_size: int):
        self.by_label = np.asarray(by_label, dtype=np.int64)  # (n,) sample index by label rank
        self.dealt = np.asarray(dealt)  # (S,) the shard at each slot (int32 where it fits)
        self.shard_size = int(shard_size)

    @property
    def size(self) -> int:
        return self.dealt.size * self.shard_size

    @property
    def shape(self) -> tuple[int]:
        return (self.size,)

    def __len__(self) -> int:
        return self.size

    def at(self, positions: np.ndarray) -> np.ndarray:
        """The indices at ``positions`` (an int array of positions in [0, size))."""
        positions = np.asarray(positions, dtype=np.int64)
        slot = positions // self.shard_size
        within = positions - slot * self.shard_size
        n, shards = self.by_label.size, self.dealt.size
        start = self.dealt[slot].astype(np.int64) * n // shards  # as shards() computed them
        return self.by_label[(start + within) % n]

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, slice):
            return self.at(np.arange(*key.indices(self.size), dtype=np.int64))
        if isinstance(key, (int, np.integer)):
            i = operator.index(key)
            if not -self.size <= i < self.size:
                raise IndexError(f"index {i} is out of bounds for size {self.size}")
            return self.at(np.array([i % self.size]))[0]
        positions = np.asarray(key)
        if positions.dtype == bool:
            positions = np.flatnonzero(positions)
        return self.at(np.where(positions < 0, positions + self.size, positions))

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = np.empty(self.size, dtype=np.int64)
        for lo in range(0, self.size, _CHUNK):
            out[lo : lo + _CHUNK] = self[lo : lo + _CHUNK]
        return out if dtype is None else out.astype(dtype)

    def min(self) -> np.int64:
        return np.asarray(self).min()

    def max(self) -> np.int64:
        return np.asarray(self).max()

    def tolist(self) -> list[int]:
        return np.asarray(self).tolist()

    def __repr__(self) -> str:
        return f"ShardIndices(size={self.size}, shards={self.dealt.size}, shard_size={self.shard_size})"


class EvenOffsets:
    """CSR offsets ``[0, step, 2 step, ..., count * step]`` (every client the same size)."""

    dtype = np.dtype(np.int64)
    ndim = 1

    def __init__(self, count: int, step: int):
        self.count = int(count)  # clients
        self.step = int(step)  # samples per client

    @property
    def size(self) -> int:
        return self.count + 1

    @property
    def shape(self) -> tuple[int]:
        return (self.size,)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, (int, np.integer)):
            i = operator.index(key)
            if not -self.size <= i < self.size:
                raise IndexError(f"index {i} is out of bounds for size {self.size}")
            return np.int64((i % self.size) * self.step)
        return np.asarray(self)[key]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = np.arange(self.size, dtype=np.int64) * self.step
        return out if dtype is None else out.astype(dtype)

    def tolist(self) -> list[int]:
        return np.asarray(self).tolist()

    def __repr__(self) -> str:
        return f"EvenOffsets(count={self.count}, step={self.step})"
