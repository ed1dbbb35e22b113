"""Control rules of AKAFL-RJ: adaptive K, remodel and judgement (spec sections 4-6).

Unlike the aggregation rules (which turn the K updates of one iteration into a step), control
rules act on the server loop after the step: they choose K_{t+1}, resend the new model to stale
clients, or keep the previous model. Each is a small factory returning a :class:`Control`
``(init, update)`` with explicit state; ``update(feedback, state) -> (decision, state)``. The loop
combines the decisions of every configured control (``aggregation.control`` in a preset), so
each can be switched on alone: AKAFL = WKAFL + adaptive_k, AKAFL-R = AKAFL + remodel,
AKAFL-RJ = AKAFL-R + judgement.

Pure numpy; no Ray, no torch. Judgement asks the loop for the candidate's validation accuracy
through ``feedback.evaluate()``, so the loop evaluates only when a rule needs it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from rayfl.errors import ConfigError
from rayfl.registry import build, check_shape
from rayfl.validation import check_int, check_real


@dataclasses.dataclass(frozen=True)
class Feedback:
    """What the loop tells the control rules after aggregating iteration t."""

    iteration: int  # t; the candidate model is w_{t+1}
    iterations: int  # T
    k: int  # K_t, the number of updates just aggregated
    loss: float  # L_t, the mean reported loss
    clients_older_than: Callable[[int], list[int]]  # live clients whose job's version is < v
    evaluate: Callable[[], float]  # validation accuracy of the candidate w_{t+1} (cached)


@dataclasses.dataclass(frozen=True)
class Decision:
    """What a control rule asks of the loop."""

    k: int | None = None  # K_{t+1}; None leaves it
    resend: tuple[int, ...] = ()  # clients to send w_{t+1} at once, dropping their jobs
    keep_previous: bool = False  # reject the candidate: w_{t+1} = w_t
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)


class Control(NamedTuple):
    """A control rule with explicit state."""

    init: Callable[[int], Any]  # init(k0) -> state
    update: Callable[[Feedback, Any], tuple[Decision, Any]]


# --- adaptive K (Algorithm 2, spec section 4) -----------------------------------------------------


class AdaptiveKState(NamedTuple):
    k_real: float  # the real-valued k_t


def adaptive_k(eps_k: float = 0.3, rho: float = 0.0005, k_min: int = 2) -> Control:
    """Adaptive K [reconstructed]: keep k while L_t > eps_k, else decay it by exp(-rho).

    k_{t+1} = k_t if L_t > eps_k, else max(k_min, k_t * exp(-rho)); K_{t+1} = round(k_{t+1}).
    Records ``agg/k_real``.
    """
    eps_k = check_real(
        "aggregation.control.adaptive_k.eps_k",
        eps_k,
        low=0.0,
        fix="use a loss threshold >= 0, e.g. 0.3",
    )
    rho = check_real(
        "aggregation.control.adaptive_k.rho",
        rho,
        low=0.0,
        fix="use a decay rate >= 0, e.g. 0.0005",
    )
    k_min = check_int(
        "aggregation.control.adaptive_k.k_min", k_min, low=1, fix="use K_min >= 1, e.g. 2"
    )

    def init(k0: int) -> AdaptiveKState:
        return AdaptiveKState(float(max(k0, k_min)))

    def update(fb: Feedback, state: AdaptiveKState) -> tuple[Decision, AdaptiveKState]:
        k = state.k_real
        if fb.loss <= eps_k:
            k = max(float(k_min), k * math.exp(-rho))
        return Decision(k=max(k_min, round(k)), metrics={"agg/k_real": k}), AdaptiveKState(k)

    return Control(init, update)


# --- remodel (Algorithm 3, spec section 5) --------------------------------------------------------


def remodel(eps_r: int = 20) -> Control:
    """Remodel: send w_{t+1} at once to every client whose job is on a version older than
    t + 1 - eps_r (staleness would exceed eps_r); its unfinished job is dropped (wasted work).

    Records ``agg/remodels`` (clients resent this iteration).
    """
    eps_r = check_int(
        "aggregation.control.remodel.eps_r",
        eps_r,
        low=0,
        fix="use a staleness bound >= 0, e.g. 20",
    )

    def init(k0: int) -> tuple[()]:
        return ()

    def update(fb: Feedback, state: tuple[()]) -> tuple[Decision, tuple[()]]:
        newest = fb.iteration + 1  # staleness of a job on v at the next iteration: newest - v
        stale = tuple(sorted(fb.clients_older_than(newest - eps_r)))
        return Decision(resend=stale, metrics={"agg/remodels": float(len(stale))}), state

    return Control(init, update)


# --- judgement (Algorithm 4, eq. 3-4, spec section 6) ---------------------------------------------


class JudgementState(NamedTuple):
    ewma: float | None  # A_t, EWMA of the accepted models' accuracy (None before the first eval)
    dev: float  # D_t, EWMA of |A_t - A_{t-1}| (DevAccuracy)
    current_accuracy: float | None  # accuracy of the current (accepted) model
    start: int | None  # t_s, the first active iteration (None: not active yet)
    maintained: int  # candidates rejected so far


def judgement(
    eps_m: float = 0.002,
    t_min_fraction: float = 0.2,
    theta_0: float = 0.01,
    kappa: float = 3.0,
    delta1: float = 0.9,
    delta2: float = 0.9,
    eval_every: int = 50,
) -> Control:
    """Judgement: once training is stable, reject a candidate clearly worse than the EWMA.

    A_t = delta1 A_{t-1} + (1 - delta1) acc_t (eq. 3); D_t = delta2 D_{t-1} + (1 - delta2)
    |A_t - A_{t-1}| (eq. 4). Active once D_t < eps_m and t >= t_min_fraction * T; t_s is the first
    active iteration. [reconstructed] tolerance theta_t = theta_0 exp(-kappa (t - t_s) / T).
    If active and acc_{t+1} < A_t - theta_t, keep w_t (count it as maintained) and feed the kept
    model's accuracy to the EWMA. Before activation the candidate is evaluated every
    ``eval_every`` iterations only; once active, every iteration.

    Records ``judge/accuracy``, ``judge/ewma``, ``judge/dev_accuracy``, ``judge/tolerance``,
    ``judge/active``, ``judge/maintained`` and ``agg/kept_previous``.
    """
    eps_m, t_min_fraction, theta_0, kappa, eval_every = _checked_judgement(
        eps_m, t_min_fraction, theta_0, kappa, delta1, delta2, eval_every
    )

    def init(k0: int) -> JudgementState:
        return JudgementState(None, 0.0, None, None, 0)

    def update(fb: Feedback, s: JudgementState) -> tuple[Decision, JudgementState]:
        t = fb.iteration
        active = s.start is not None
        if not active and (t + 1) % eval_every != 0:
            return Decision(metrics={"judge/active": 0.0, "agg/kept_previous": 0.0}), s
        acc = fb.evaluate()
        keep = False
        tolerance = math.nan
        if active:
            tolerance = theta_0 * math.exp(-kappa * (t - s.start) / fb.iterations)
            assert s.ewma is not None
            keep = acc < s.ewma - tolerance
        accepted = s.current_accuracy if keep and s.current_accuracy is not None else acc
        ewma, dev = _ewma_step(s, accepted, delta1, delta2)
        start = s.start
        if (
            start is None
            and dev < eps_m
            and t >= t_min_fraction * fb.iterations
            and s.ewma is not None
        ):
            start = t  # active from this iteration on: evaluate every iteration
        new = JudgementState(ewma, dev, accepted, start, s.maintained + int(keep))
        metrics = _judgement_metrics(acc, tolerance, keep, new)
        return Decision(keep_previous=keep, metrics=metrics), new

    return Control(init, update)


def _ewma_step(
    s: JudgementState, accepted: float, delta1: float, delta2: float
) -> tuple[float, float]:
    """(A_t, D_t) once ``accepted`` is fed in (eq. 3-4); the first one starts A at it, D at 0."""
    if s.ewma is None:
        return accepted, 0.0
    ewma = delta1 * s.ewma + (1 - delta1) * accepted
    dev = delta2 * s.dev + (1 - delta2) * abs(ewma - s.ewma)
    return ewma, dev


def _judgement_metrics(
    acc: float, tolerance: float, keep: bool, new: JudgementState
) -> dict[str, float]:
    """What judgement records for an evaluated candidate (``new``: the state after it)."""
    return {
        "judge/accuracy": acc,
        "judge/ewma": new.ewma,
        "judge/dev_accuracy": new.dev,
        "judge/tolerance": tolerance,
        "judge/active": float(new.start is not None),
        "judge/maintained": float(new.maintained),
        "agg/kept_previous": float(keep),
    }


def _checked_judgement(
    eps_m: Any,
    t_min_fraction: Any,
    theta_0: Any,
    kappa: Any,
    delta1: Any,
    delta2: Any,
    eval_every: Any,
) -> tuple[float, float, float, float, int]:
    """Checks judgement's parameters; returns (eps_m, t_min_fraction, theta_0, kappa,
    eval_every) as float and int. delta1 and delta2 are only checked: judgement uses them as
    given."""
    eps_m = check_real(
        "aggregation.control.judgement.eps_m",
        eps_m,
        low=0.0,
        fix="use a threshold >= 0, e.g. 0.002",
    )
    t_min_fraction = check_real(
        "aggregation.control.judgement.t_min_fraction",
        t_min_fraction,
        low=0.0,
        high=1.0,
        fix="use a fraction of T in [0, 1], e.g. 0.2",
    )
    theta_0 = check_real(
        "aggregation.control.judgement.theta_0",
        theta_0,
        low=0.0,
        fix="use a tolerance >= 0, e.g. 0.01",
    )
    kappa = check_real(
        "aggregation.control.judgement.kappa", kappa, low=0.0, fix="use a decay >= 0, e.g. 3"
    )
    for name, value in (("delta1", delta1), ("delta2", delta2)):
        check_real(
            f"aggregation.control.judgement.{name}",
            value,
            low=0.0,
            high=1.0,
            fix="use a factor in [0, 1), e.g. 0.9",
        )
        if value >= 1.0:
            raise ConfigError(
                f"aggregation.control.judgement.{name}={value} must be < 1: use e.g. 0.9"
            )
    eval_every = check_int(
        "aggregation.control.judgement.eval_every", eval_every, low=1, fix="use e.g. 50"
    )
    return eps_m, t_min_fraction, theta_0, kappa, eval_every


CONTROLS: dict[str, Callable[..., Control]] = {
    "adaptive_k": adaptive_k,
    "remodel": remodel,
    "judgement": judgement,
}


def build_controls(spec: Mapping[str, Mapping[str, Any] | None]) -> list[tuple[str, Control]]:
    """The configured control rules (``aggregation.control``), in mapping order.

    A key is a shipped control (:data:`CONTROLS`) or an import path ``package.module:factory``
    to a user's own, whose factory returns a :class:`Control` (``init(k0) -> state``,
    ``update(feedback, state) -> (decision, state)``).
    """
    if not isinstance(spec, Mapping):
        raise ConfigError(
            "aggregation.control must map control names to parameters, e.g. {remodel: {eps_r: 20}}"
        )
    out = []
    for name, params in spec.items():
        field = f"aggregation.control.{name}"
        control = build(field, name, CONTROLS, params, "control rule")
        methods = {"init": "init(k0)", "update": "update(feedback, state)"}
        check_shape(field, control, "Control", methods)
        out.append((name, Control(control.init, control.update)))
    return out


def decide(
    controls: list[tuple[str, Control]], states: list[Any], fb: Feedback
) -> tuple[Decision, list[Any]]:
    """Runs every control on the same feedback and merges their decisions."""
    k, resend, keep, metrics = None, set(), False, {}
    new_states = []
    for (_, control), state in zip(controls, states, strict=True):
        d, state = control.update(fb, state)
        new_states.append(state)
        k = d.k if d.k is not None else k
        resend.update(d.resend)
        keep = keep or d.keep_previous
        metrics.update(d.metrics)
    return Decision(
        k=k, resend=tuple(sorted(resend)), keep_previous=keep, metrics=metrics
    ), new_states
