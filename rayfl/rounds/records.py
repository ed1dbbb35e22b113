"""What a synchronous run records beyond metrics.parquet (incentive spec section 8).

``rounds.parquet`` holds one row per round (:func:`round_record`): the columns every run has
(:data:`COMMON_COLUMNS`: the selection, payments, utilities, social welfare, the accuracy), then
the columns the selector records itself (:attr:`~rayfl.selection.api.Selection.record`: the
incentive mechanism's bids, caps, bargaining steps, leftover and carried budget, the Nash product
of the bargain and its APE against the exact NBS; pow-d's candidates and their losses).
:class:`RoundRecords` keeps them for the run folder; :func:`round_summary` gives summary.json's
numbers, e.g. ``t75`` (:func:`rounds_to`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from rayfl.errors import RayflError
from rayfl.partlog import PartLog
from rayfl.selection.api import Selection

ROUNDS_FILE = "rounds.parquet"
T_TARGET = 0.75  # the paper's accuracy target (t75)


COMMON_COLUMNS = (
    "round",
    "selector",
    "m",
    "selected",
    "num_selected",
    "skipped",
    "payments",
    "client_utilities",
    "client_utility_sum",
    "gain",
    "predicted_gain",
    "server_utility",
    "social_welfare",
    "accuracy",
)
"""The columns of rounds.parquet whatever the selector (spec section 8); the selector's own
columns (:attr:`~rayfl.selection.api.Selection.record`) follow them."""


ROUND_METRICS = (
    "iteration",
    "train/loss",
    "agg/k",
    "sel/m",
    "sel/skipped",
    "util/server",
    "util/clients",
    "util/social_welfare",
    "sys/virtual_time",
    "sys/worker_failures",
    "sys/round_s",
    "sys/wall_s",
    "eval/accuracy",
    "eval/loss",
)
"""The metric columns the engine writes each round; the selector's own
(:attr:`~rayfl.selection.api.Selection.metrics`) follow them."""


def check_names(kind: str, selection: Selection) -> None:
    """The selector's columns do not reuse the engine's names: checked before the round trains,
    so a clash stops the run with nothing of the round done."""
    merged(kind, "record", dict.fromkeys(COMMON_COLUMNS), selection.record)
    merged(kind, "metrics", dict.fromkeys(ROUND_METRICS), selection.metrics)


def round_record(
    t: int, kind: str, m: int, selection: Selection, outcome: Mapping[str, Any], accuracy: float
) -> dict[str, Any]:
    """Round t's row of rounds.parquet: the common columns, then the selector's record.

    ``outcome``: the round's gain, predicted gain, utilities and social welfare (section 8).
    """
    clients = selection.clients
    common = {
        "round": t,
        "selector": kind,
        "m": m,
        "selected": [int(i) for i in clients],
        "num_selected": len(clients),
        "skipped": not len(clients),
        "payments": np.asarray(selection.payments, dtype=np.float64).tolist(),
        **outcome,
        "accuracy": accuracy,
    }
    return merged(kind, "record", common, selection.record)


def merged(kind: str, what: str, base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with the selector's ``extra`` columns after it; a name both hold is an error,
    so a selector cannot overwrite what the engine records."""
    clash = sorted(set(base) & set(extra))
    if clash:
        raise RayflError(
            f"selection.kind={kind!r}: Selection.{what} uses the engine's column names "
            f"{clash}: rename them"
        )
    return {**base, **extra}


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
        "final_carried": records[-1].get("carried", math.nan),  # a budget-carrying selector's
        "mean_social_welfare": float(np.nanmean([r["social_welfare"] for r in records])),
    }


class RoundRecords:
    """rounds.parquet of a run folder: the records also kept in memory (one small row per round,
    for the round summary); each flush appends the new ones as a part
    (:class:`~rayfl.partlog.PartLog`), and :meth:`compact` folds the parts into the one file
    when the run ends."""

    key = "round"

    def __init__(self, run_dir: Path):
        self.path = run_dir / ROUNDS_FILE
        self.log = PartLog(self.path)
        self.records: list[dict[str, Any]] = []
        self._written = 0  # records already on disk

    def extend(self, records: list[dict[str, Any]]) -> None:
        self.records.extend(records)

    def load(self, before_round: int) -> None:
        """A resumed run: the records already in the run folder, of rounds before the given."""
        self.log.trim("round", before_round)
        self.records = self.log.table().to_pylist()
        self._written = len(self.records)

    def trim(self, before_round: int) -> None:
        self.records = [r for r in self.records if r["round"] < before_round]
        if self._written > len(self.records):  # rounds on disk that the checkpoint predates
            self.log.trim("round", before_round)
        self._written = min(self._written, len(self.records))

    def flush(self) -> None:
        self.log.append(self.records[self._written :])
        self._written = len(self.records)

    def compact(self) -> None:
        self.log.compact()
