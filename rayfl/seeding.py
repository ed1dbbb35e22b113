"""Every random draw in rayfl comes from a generator derived from ``(seed, stream, ids...)``.

FedJAX-style: ``np.random.default_rng([seed, stream, *ids])`` with a fixed stream id per purpose,
so a draw depends only on the run's seed and *what* it is for (client, version, iteration), never
on the order in which workers happen to run. A seeded virtual-clock run therefore produces the same
model bytes with 1 worker or 8. Never use the global ``np.random`` or an unseeded torch call.
"""

from __future__ import annotations

import numpy as np

# Stream ids: one per purpose. Keep them stable: changing one changes every seeded result.
MODEL_INIT = 1  # initial global weights w_0
SPEED = 2  # per-client speed a_i and straggler membership
DURATION = 3  # per-job duration noise X ~ Exp(1), keyed by (client, version)
BATCH = 4  # mini-batch draws, keyed by (client, version)
EVAL_SUBSET = 5  # the fixed evaluation subset (eval.max_samples)
VALIDATION = 6  # judgement's validation subset
PARTITION = 1001  # data partition (rayfl.data.partition)
INCENTIVE_POPULATION = 20  # private incentive traits (gamma, mu, delta_i, beta_i), keyed by client
SELECTION = 22  # client selection draws and tie-breaks (rayfl.selection), keyed by round
EXPERIMENT_B = 23  # bargaining-vs-NBS experiment draws (rayfl.selection.experiment_b), keyed by |C|
ROUND_BATCH = 24  # synchronous rounds: local-epoch shuffles, keyed by (client, round)
ROUND_LOSS = 25  # synchronous rounds: F_i(w(t)) mini-batches, keyed by (client, round)
DP_NOISE = 26  # differential privacy: the server's Gaussian noise, keyed by iteration
CLIENT_SAMPLE = 27  # bounded concurrency: the next clients to start, keyed by iteration


def rng(seed: int, stream: int, *ids: int) -> np.random.Generator:
    """A numpy generator for ``(seed, stream, ids...)``; ids are non-negative ints."""
    return np.random.default_rng([int(seed), int(stream), *(int(i) for i in ids)])


def derive(seed: int, stream: int, *ids: int) -> int:
    """A 63-bit integer seed for ``(seed, stream, ids...)``, e.g. for ``torch.Generator``."""
    return int(rng(seed, stream, *ids).integers(2**63 - 1))
