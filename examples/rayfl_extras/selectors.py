"""A client selector written against rayfl's public selector API only (``rayfl.selection``).

A selector is ``Selector(init, select, handlers)``: ``init(num_clients) -> state``,
``select(context, state, ask) -> (Selection, state)``. What it needs from the clients it asks
through ``ask(query, client_ids, payload)``; the question is answered inside each client's worker
by a ``QueryHandler`` it registers, which declares the only reply types that may reach the server.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from rayfl.selection import QueryHandler, Selection, Selector


@dataclasses.dataclass(frozen=True, slots=True)
class Utility:
    """All a client discloses: one number, not its loss or its data size."""

    client_id: int
    utility: float


def report_utility(client: Any, items: list[Any], payload: Any) -> Utility:
    """On the worker: the statistical utility |D_i| * F_i(w(t)) (Oort's |B_i| sqrt(mean loss^2),
    Lai et al., OSDI 2021, simplified to the mean loss the client can compute)."""
    return Utility(client.client_id, client.data_size * client.loss())


def utility_bandit(explore: float = 1.0) -> Selector:
    """Picks the M(t) clients of highest utility + explore * sqrt(log(t + 1) / (1 + n_i)), n_i
    the rounds client i was picked in (a UCB bonus, so that no client is starved). State: (N,)
    int64 n_i. Records the utilities and bonuses it chose by as rounds.parquet columns."""
    if explore < 0:
        raise ValueError("explore must be >= 0")

    def init(num_clients: int) -> np.ndarray:
        return np.zeros(num_clients, dtype=np.int64)

    def select(ctx: Any, picked: np.ndarray, ask: Any) -> tuple[Selection, np.ndarray]:
        replies = ask("utility", range(ctx.num_clients))
        utility = np.array([r.utility for r in replies])
        scale = max(float(np.abs(utility).max()), 1e-12)  # the bonus in units of utility
        bonus = explore * scale * np.sqrt(math.log(ctx.t + 1) / (1.0 + picked))
        score = utility + bonus
        chosen = np.lexsort((ctx.rng.random(ctx.num_clients), -score))[: ctx.m]  # ties: seeded
        after = picked.copy()
        after[chosen] += 1
        record = {"utilities": utility.tolist(), "bonuses": bonus.tolist()}
        return Selection(
            chosen, record=record, metrics={"extras/max_picked": float(after.max())}
        ), after

    return Selector(init, select, {"utility": QueryHandler(report_utility, (Utility,))})
