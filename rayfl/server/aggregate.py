"""The aggregation step of one K-async iteration (AKAFL-RJ spec section 3; no Ray).

Updates are checked before they reach the model (:func:`check_update`); the valid ones go through
the rule chain, which makes the direction g_t and the learning rate eta_t, and the candidate model
is w_{t+1} = w_t - eta_t g_t (control rules may still reject it: judgement).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from rayfl.aggregation import Rule, Step, final_direction, start_step
from rayfl.types import Update


def check_update(u: Update, shape: tuple[int, ...], max_norm: float | None) -> str | None:
    """Why an update must be rejected before aggregation: shape | dtype | nonfinite | norm;
    None if it is fine."""
    v = u.vector
    if not isinstance(v, np.ndarray) or v.shape != shape:
        return "shape"
    if v.dtype != np.float32:
        return "dtype"
    if not math.isfinite(u.loss):
        return "nonfinite"
    with np.errstate(over="ignore", invalid="ignore"):
        sq = float(np.dot(v, v))  # one BLAS pass: NaN or inf anywhere makes it non-finite
    if not math.isfinite(sq):
        if not np.isfinite(v).all():
            return "nonfinite"
        return None if max_norm is None else "norm"  # finite entries, the square overflowed
    if max_norm is not None and sq > max_norm * max_norm:
        return "norm"
    return None


@dataclasses.dataclass(frozen=True)
class Aggregate:
    """The outcome of the rule chain at iteration t."""

    step: Step  # the chain's last Step: weights, lr, metrics
    direction: np.ndarray  # (P,) float32 g_t
    candidate: np.ndarray  # (P,) float32 w_t - eta_t g_t


def aggregate(
    rule: Rule,
    rule_state: Any,
    t: int,
    updates: Sequence[Update],
    w: np.ndarray,
    lr: float,
    previous_direction: np.ndarray | None,
) -> tuple[Aggregate, Any]:
    """Runs the rule chain on the K_t valid ``updates`` of iteration t; (aggregate, new state)."""
    step = start_step(
        t,
        np.stack([u.vector for u in updates]),
        [t - u.version for u in updates],
        [u.loss for u in updates],
        lr,
        previous_direction,
    )
    step, rule_state = rule.update(step, rule_state)
    direction = final_direction(step)
    candidate = (w - np.float32(step.lr) * direction).astype(np.float32, copy=False)
    return Aggregate(step, direction, candidate), rule_state


def update_rows(t: int, updates: Sequence[Update], weights: Sequence[float]) -> list[dict]:
    """updates.parquet's rows of iteration t: one per aggregated update."""
    weights = np.asarray(weights, dtype=np.float64)
    return [
        {
            "iteration": t,
            "client_id": u.client_id,
            "version": u.version,
            "staleness": t - u.version,
            "weight": float(weights[j]),
            "loss": u.loss,
            "worker": u.worker,
        }
        for j, u in enumerate(updates)
    ]
