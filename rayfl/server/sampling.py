"""Bounded concurrency: which idle client starts training next (``clock.concurrency``).

Cross-device FL and FedBuff (Nguyen et al., AISTATS 2022) keep C clients in training at once,
not the whole population: when the server takes an update, a client drawn uniformly from the
idle ones starts on the newest model. The draws come from ``seeding.rng(seed, CLIENT_SAMPLE,
1, t)`` at iteration t and depend on the set of busy clients only, so on the virtual clock a run
gives the same bytes on any cluster, and a resumed run continues on the same draws. A draw costs
O(count) expected (rejection against the busy set while it is at most half of N), never O(N).
"""

from __future__ import annotations

from collections.abc import Container

import numpy as np

from rayfl import seeding


class IdleClientSampler:
    """Draws the clients that start training, with at most ``concurrency`` busy at once."""

    def __init__(self, num_clients: int, concurrency: int, seed: int):
        self.num_clients = num_clients
        self.concurrency = concurrency
        self.seed = seed

    def initial(self) -> list[int]:
        """The C clients that start on w_0."""
        rng = seeding.rng(self.seed, seeding.CLIENT_SAMPLE, 0, 0)
        return rng.choice(self.num_clients, size=self.concurrency, replace=False).tolist()

    def next(self, t: int, count: int, busy: Container[int]) -> list[int]:
        """``count`` distinct idle clients (not in ``busy``) to start at iteration t."""
        rng = seeding.rng(self.seed, seeding.CLIENT_SAMPLE, 1, t)
        n = self.num_clients
        if 2 * self.concurrency > n:  # dense: draw from the idle list itself, O(N)
            idle = np.array([i for i in range(n) if i not in busy], dtype=np.int64)
            return rng.choice(idle, size=min(count, idle.size), replace=False).tolist()
        chosen: list[int] = []
        seen: set[int] = set()
        while len(chosen) < count:
            i = int(rng.integers(n))
            if i not in busy and i not in seen:
                seen.add(i)
                chosen.append(i)
        return chosen
