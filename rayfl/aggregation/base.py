"""The contract every aggregation rule follows (optax-style: tiny transforms with explicit state).

One K-async iteration hands the K_t arriving updates to a chain of rules as a :class:`Step`.
Each rule is a :class:`Rule` ``(init, update)`` pair: ``init() -> state`` and
``update(step, state) -> (step, state)``. A rule reads the fields it needs and returns a new
``Step`` (``dataclasses.replace``) with the fields it changes; it never mutates its input.
WKAFL, AKAFL, ... are recipes: ordered lists of rules (see ``recipes.py`` and the presets).

After the chain, the server applies ``w_{t+1} = w_t - step.lr * step.direction``; if no rule set
``direction``, it is the weighted sum ``sum_i step.weights[i] * step.updates[i]``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np


@dataclasses.dataclass(frozen=True)
class Step:
    """What flows through the rule chain for one iteration t."""

    iteration: int  # t
    updates: np.ndarray  # (K, P) float32: the client updates g_i (rules may replace them)
    staleness: np.ndarray  # (K,) int64: tau_i = t - v_i
    losses: np.ndarray  # (K,) float64: the mini-batch losses the clients reported
    weights: np.ndarray  # (K,) float64: aggregation weights, start uniform 1/K, sum to 1
    lr: float  # eta_t, starts at the config's base learning rate
    previous_direction: np.ndarray | None = None  # (P,) g_{t-1}, None at t = 0
    estimate: np.ndarray | None = None  # (P,) g_est, set by `estimate`-type rules
    direction: np.ndarray | None = None  # (P,) g_t, set by a reducing rule
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)  # per-iteration records

    def with_metrics(self, **values: float) -> Step:
        """Returns a copy with ``values`` merged into ``metrics`` (keys like ``agg/selected``)."""
        return dataclasses.replace(self, metrics={**self.metrics, **values})


class Rule(NamedTuple):
    """A composable aggregation transform with explicit state."""

    init: Callable[[], Any]
    update: Callable[[Step, Any], tuple[Step, Any]]


def chain(*rules: Rule) -> Rule:
    """Composes rules left to right; the state is the tuple of the rules' states."""

    def init() -> tuple[Any, ...]:
        return tuple(r.init() for r in rules)

    def update(step: Step, state: tuple[Any, ...]) -> tuple[Step, tuple[Any, ...]]:
        new_states = []
        for rule, s in zip(rules, state, strict=True):
            step, s = rule.update(step, s)
            new_states.append(s)
        return step, tuple(new_states)

    return Rule(init, update)


def final_direction(step: Step) -> np.ndarray:
    """g_t: ``step.direction`` if a rule set it, else the weighted sum of the updates. (P,) float32."""
    if step.direction is not None:
        return step.direction
    w = np.asarray(step.weights, dtype=np.float32)
    return (w @ step.updates).astype(np.float32, copy=False)


def start_step(
    iteration: int,
    updates: np.ndarray,
    staleness: Sequence[int] | np.ndarray,
    losses: Sequence[float] | np.ndarray,
    lr: float,
    previous_direction: np.ndarray | None = None,
) -> Step:
    """Builds the first ``Step`` of an iteration with uniform weights and ``train/loss`` recorded."""
    k = updates.shape[0]
    losses_arr = np.asarray(losses, dtype=np.float64)
    tau = np.asarray(staleness, dtype=np.int64)
    return Step(
        iteration=iteration,
        updates=updates,
        staleness=tau,
        losses=losses_arr,
        weights=np.full(k, 1.0 / k),
        lr=float(lr),
        previous_direction=previous_direction,
        metrics={
            "train/loss": float(losses_arr.mean()),
            "agg/staleness_min": float(tau.min()),
            "agg/staleness_mean": float(tau.mean()),
            "agg/staleness_max": float(tau.max()),
        },
    )
