"""What a synchronous run records beyond metrics.parquet (incentive spec section 8).

``rounds.parquet`` holds one row per round (:data:`ROUND_COLUMNS`): the selection, the bids,
caps, payments, bargaining steps, leftover and carried budget, utilities, social welfare, the
Nash product of the bargain and its APE against the exact NBS, and the accuracy.
:class:`RoundRecords` keeps them for the run folder; :func:`round_summary` gives summary.json's
numbers, e.g. ``t75`` (:func:`rounds_to`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from rayfl.metrics import write_table
from rayfl.selection import IncentiveRound

ROUNDS_FILE = "rounds.parquet"
T_TARGET = 0.75  # the paper's accuracy target (t75)


ROUND_COLUMNS = (
    "round",
    "selector",
    "m",
    "selected",
    "num_selected",
    "skipped",
    "budget",
    "announced_caps",
    "num_bids",
    "num_candidates",
    "bids",
    "caps",
    "payments",
    "steps",
    "leftover",
    "carried",
    "disagreed",
    "candidates",
    "candidate_losses",
    "server_bargain_utility",
    "client_utilities",
    "client_utility_sum",
    "gain",
    "predicted_gain",
    "server_utility",
    "social_welfare",
    "log_nash_product",
    "log_nash_product_nbs",
    "nash_product",
    "ape",
    "accuracy",
)
"""The columns of rounds.parquet, one row per round (spec section 8)."""


def empty_record(t: int, kind: str, m: int) -> dict[str, Any]:
    nan = math.nan
    return {
        "round": t,
        "selector": kind,
        "m": m,
        "budget": nan,
        "announced_caps": [],
        "num_bids": [],
        "num_candidates": [],
        "bids": [],
        "caps": [],
        "payments": [],
        "steps": [],
        "leftover": nan,
        "carried": nan,
        "disagreed": [],
        "candidates": [],
        "candidate_losses": [],
        "server_bargain_utility": [],
        "client_utilities": [],
        "log_nash_product": nan,
        "log_nash_product_nbs": nan,
        "nash_product": nan,
        "ape": nan,
    }


def incentive_record(r: IncentiveRound) -> dict[str, Any]:
    return {
        "budget": r.budget,
        "announced_caps": list(r.announced_caps),
        "num_bids": list(r.num_bids),
        "num_candidates": list(r.num_candidates),
        "bids": r.bids.tolist(),
        "caps": r.caps.tolist(),
        "payments": r.payments.tolist(),
        "steps": r.steps.tolist(),
        "leftover": float(math.fsum(r.leftover)),
        "carried": r.carried,
        "disagreed": r.disagreed.tolist(),
        "server_bargain_utility": r.server_utility.tolist(),
        "log_nash_product": r.log_nash_product,
        "log_nash_product_nbs": r.log_nash_product_nbs,
        "nash_product": math.exp(r.log_nash_product)
        if math.isfinite(r.log_nash_product)
        else math.nan,
        "ape": r.ape,
    }


def rounds_to(accuracy: list[float] | np.ndarray, target: float = T_TARGET) -> int | None:
    """Rounds completed when the accuracy first reaches ``target`` (None if never).

    ``accuracy[t]`` is the accuracy after round t (0-based), so the answer is t + 1.

    >>> rounds_to([0.5, 0.7, 0.76, 0.74])
    3
    """
    hits = np.flatnonzero(np.nan_to_num(np.asarray(accuracy, dtype=float), nan=-1.0) >= target)
    return int(hits[0]) + 1 if hits.size else None


def round_summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    """summary.json's numbers of a synchronous run's records."""
    if not records:
        return {}
    acc = [r["accuracy"] for r in records]
    pays = [sum(r["payments"]) for r in records]
    return {
        "t75": rounds_to(acc),
        "rounds_skipped": int(sum(r["skipped"] for r in records)),
        "total_payments": float(sum(pays)),
        "final_carried": records[-1]["carried"],
        "mean_social_welfare": float(np.nanmean([r["social_welfare"] for r in records])),
    }


class RoundRecords:
    """rounds.parquet of a run folder: the records kept in memory (one small row per round)
    and rewritten whole at each flush, so the file always holds exactly the rounds logged."""

    key = "round"

    def __init__(self, run_dir: Path):
        self.path = run_dir / ROUNDS_FILE
        self.records: list[dict[str, Any]] = []

    def extend(self, records: list[dict[str, Any]]) -> None:
        self.records.extend(records)

    def load(self, before_round: int) -> None:
        """A resumed run: the records already in the run folder, of rounds before the given."""
        if self.path.is_file():
            rows = pq.read_table(self.path).to_pylist()
            self.records = [r for r in rows if r["round"] < before_round]

    def trim(self, before_round: int) -> None:
        self.records = [r for r in self.records if r["round"] < before_round]

    def flush(self) -> None:
        if self.records:
            write_table(self.path, [{c: r[c] for c in ROUND_COLUMNS} for r in self.records])
