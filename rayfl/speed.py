"""The speed model of the clients (AKAFL-RJ spec section 2; Dutta et al. 2018).

A job of client i on version v takes
    d = a_i * B * E * (1 + X) + model_bytes / bw_i,   X ~ Exp(1),
virtual time units, with a per-client speed a_i ~ U(a_lo, a_hi), a fraction of stragglers slowed
by a factor, and X drawn from ``seeding.rng(seed, DURATION, i, v)``: the duration depends only on
the seed. Both engines use it (the K-async clocks order jobs by it; synchronous rounds last as long
as their slowest client), and so do the clients' private traits in the incentive mechanism.
"""

from __future__ import annotations

import numpy as np

from rayfl import seeding
from rayfl.config import ClockConfig
from rayfl.exponential import exponentials


class SpeedModel:
    """Per-client speeds and seeded per-job durations (virtual time units)."""

    def __init__(
        self, cfg: ClockConfig, num_clients: int, work: float, model_bytes: int, seed: int
    ):
        r = seeding.rng(seed, seeding.SPEED)
        self.speed = r.uniform(cfg.speed_low, cfg.speed_high, size=num_clients)  # (N,)
        n_slow = int(round(cfg.straggler_fraction * num_clients))
        self.is_straggler = np.zeros(num_clients, dtype=bool)
        self.is_straggler[r.permutation(num_clients)[:n_slow]] = True
        self.speed[self.is_straggler] *= cfg.straggler_slowdown
        self.work = work  # B * E samples per job
        self.comm = 0.0 if cfg.bandwidth is None else model_bytes / cfg.bandwidth
        self.seed = seed

    def duration(self, client_id: int, version: int) -> float:
        """d for the job (client_id, version): virtual time units, > 0."""
        x = seeding.rng(self.seed, seeding.DURATION, client_id, version).exponential()
        return float(self.speed[client_id] * self.work * (1.0 + x) + self.comm)

    def durations(self, client_ids: np.ndarray, versions: np.ndarray | int) -> np.ndarray:
        """``(n,)`` float64: :meth:`duration` of each job (client_ids[j], versions[j]), the same
        bits, ~1 us a job instead of ~25 (:mod:`rayfl.exponential`); for dispatching
        millions of clients at once."""
        client_ids = np.asarray(client_ids, dtype=np.int64)
        versions = np.broadcast_to(np.asarray(versions, dtype=np.int64), client_ids.shape)
        x = exponentials(self.seed, seeding.DURATION, client_ids, versions)
        # the same operations in the same order as duration(): the same float64 bits
        return self.speed[client_ids] * self.work * (1.0 + x) + self.comm
