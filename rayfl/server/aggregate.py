"""The aggregation step of one K-async iteration (AKAFL-RJ spec section 3; no Ray).

Updates are checked before they reach the model (:func:`check_update`); the valid ones go through
the rule chain, which makes the direction g_t and the learning rate eta_t, and the server optimizer
makes the candidate model w_{t+1} (SGD: w_t - eta_t g_t); control rules may still reject it
(judgement).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from rayfl.aggregation import Rule, ServerOptimizer, Step, arrays, final_direction, start_step
from rayfl.aggregation.backend import Placement
from rayfl.errors import RayflError
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
    """The outcome of the rule chain and the server optimizer at iteration t.

    The new states are not applied yet: the loop commits them only if the candidate is kept
    (judgement may reject it; then the rules' ``update`` states still stand, but no ``commit``
    runs and the optimizer's state stays as it was).
    """

    step: Step  # the chain's last Step: weights, direction g_t, lr, metrics
    direction: Any  # (P,) float32 g_t, in the chain's backend
    candidate: np.ndarray  # (P,) float32 w_{t+1} as the server optimizer made it, on the host
    rule_state: Any  # the chain's state after its update
    optimizer_state: Any  # the optimizer's state if the candidate is kept
    candidate_native: Any = None  # the candidate in the chain's backend (the same on numpy)


def aggregate(
    rule: Rule,
    rule_state: Any,
    optimizer: ServerOptimizer,
    optimizer_state: Any,
    t: int,
    updates: Sequence[Update],
    w: Any,
    lr: float,
    placement: Placement | None = None,
    **context: Any,
) -> Aggregate:
    """Runs the rule chain and the server optimizer on the K_t valid ``updates`` of iteration t;
    ``w`` is w_t in the chain's backend, ``placement`` moves the updates there (None: numpy);
    ``context`` sets more Step fields (``seed``, ``num_clients``, ``local_models``)."""
    place = placement or Placement("numpy")
    reports = stacked_reports([u.report for u in updates])
    if reports:
        context["reports"] = reports
    if place.kind != "numpy" and context.get("local_models") is not None:
        host_models = context["local_models"]
        context["local_models"] = lambda: place.native(host_models())
    step = start_step(
        t,
        place.native(np.stack([u.vector for u in updates])),
        [t - u.version for u in updates],
        [u.loss for u in updates],
        lr,
        [u.client_id for u in updates],
        updates_writable=True,  # a fresh stack: the first rule may write into it
        **context,
    )
    step, rule_state = rule.update(step, rule_state, w)
    direction = final_direction(step)
    native, optimizer_state = optimizer.apply(step, optimizer_state, w)
    candidate = np.asarray(arrays.to_host(native))  # one (P,) copy off the device on torch
    if candidate.shape != tuple(w.shape) or candidate.dtype != np.float32:
        raise RayflError(
            f"aggregation.optimizer made a model of shape {candidate.shape} and dtype "
            f"{candidate.dtype}: it must return (P,) float32 like the params it was given"
        )
    native = candidate if place.kind == "numpy" else native
    return Aggregate(step, direction, candidate, rule_state, optimizer_state, native)


def stacked_reports(reports: Sequence[dict[str, np.ndarray] | None]) -> dict[str, np.ndarray]:
    """The clients' reports (ClientTask.report) stacked by name: {name: (K, ...) array}; empty
    when none reports. Every update must report the same names and shapes."""
    if all(r is None for r in reports):
        return {}
    names = [sorted(r) if r is not None else [] for r in reports]
    if any(n != names[0] for n in names):
        raise RayflError(
            f"client.task: the updates of one iteration report different names ({names[0]} and "
            f"{next(n for n in names if n != names[0])}): every report() must return the same"
        )
    try:
        return {k: np.stack([r[k] for r in reports]) for k in names[0]}  # type: ignore[index]
    except ValueError as e:
        raise RayflError(
            f"client.task: the reports do not stack ({e}): keep shapes fixed"
        ) from None


def check_finite(t: int, candidate: np.ndarray, cfg: Any) -> None:
    """Stops the run with one line if w_{t+1} holds NaN or inf (a diverging algorithm): the
    results written so far stay in the run folder."""
    with np.errstate(over="ignore", invalid="ignore"):
        sq = float(np.dot(candidate, candidate))  # one BLAS pass
    if math.isfinite(sq) or np.isfinite(candidate).all():
        return
    raise RayflError(
        f"iteration {t}: the model diverged (NaN or inf weights) with aggregation.lr="
        f"{cfg.aggregation.lr} and aggregation.optimizer={cfg.aggregation.optimizer!r}: lower the "
        "learning rates (aggregation.lr, client.local_lr) or clip the updates; the metrics up to "
        "here are in the run folder"
    )


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
