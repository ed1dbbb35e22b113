"""A partitioner written against rayfl's public API only.

A partitioner is ``function(labels, num_clients, rng, **params)`` returning a
``rayfl.data.Partition`` or one array of sample indices per client; ``rng`` is the run's seeded
generator, so the split is the same for the same seed on any machine.
"""

from __future__ import annotations

import numpy as np

from rayfl.data import Partition


def quantity_skew(
    labels: np.ndarray,
    num_clients: int,
    rng: np.random.Generator,
    sigma: float = 1.0,
    min_size: int = 8,
) -> Partition:
    """Label-IID clients of log-normal sizes (quantity skew; Li et al., "Federated learning on
    non-IID data silos", ICDE 2022): size_i ~ LogNormal(0, sigma), scaled to the data set, at
    least ``min_size`` samples each."""
    n = labels.shape[0]
    if num_clients * min_size > n:
        raise ValueError(f"{num_clients} clients x {min_size} samples exceed the {n} samples")
    weights = rng.lognormal(0.0, sigma, size=num_clients)
    spare = n - num_clients * min_size
    sizes = min_size + np.floor(weights / weights.sum() * spare).astype(np.int64)
    order = rng.permutation(n)
    offsets = np.zeros(num_clients + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    return Partition(indices=order[: offsets[-1]], offsets=offsets)
