"""Aggregation rules of K-async SGD and WKAFL, one tiny factory per step of the spec.

Implements section 3 of the AKAFL-RJ spec of record (``specs/akafl-rj.md``): the WKAFL rules of
Zhou et al., "Towards efficient and stable K-asynchronous federated learning with unbounded stale
gradients on non-IID data" (IEEE TPDS 2022, arXiv 2203.01214), as used by AKAFL-RJ Algorithm 1
lines 13-28, and the plain average of K-async SGD (Dutta et al., AISTATS 2018).

Each factory returns a :class:`~rayfl.aggregation.base.Rule` ``(init, update, stage, commit)`` with
explicit state (:class:`EmptyState` for every rule here but ``momentum_clip``, which keeps g_{t-1}
in a :class:`MomentumState`). Rules compose with ``chain``; WKAFL is a recipe (``recipes.py``),
not a class. Shapes: ``updates`` (K, P) float32, ``weights`` (K,) float64
summing to 1, ``estimate``/``direction`` (P,) float32. No rule mutates its input arrays, except
that ``momentum_clip`` adds into ``updates`` when ``Step.updates_writable`` says it may (base.py).

Example::

    rule = chain(staleness_weights(), estimate(), similarity_select(), weighted_sum(),
                 staleness_lr())
    step, state = rule.update(start_step(t, updates, tau, losses, lr=0.005), rule.init(w), w)
    w_next = w - step.lr * step.direction

Note: adaptive K (spec section 4), remodel (section 5) and judgement (section 6), the AKAFL
additions, are *control rules*: they act on the server loop (change K for the next iteration,
resend the model to stale clients, keep the previous model) rather than on the K updates of one
iteration, so they live in the server's control hook, not in this chain.

Configs pick rules by name from :data:`RULES` (or by import path, for a user's own rule);
:func:`rayfl.aggregation.build.build_rules` turns the ``aggregation.rules`` list of a preset into
one chained rule.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from rayfl.aggregation import arrays
from rayfl.aggregation.base import Rule, Step
from rayfl.validation import check_int, check_real, fail

LR_FORMS = ("inverse", "power")


class EmptyState(NamedTuple):
    """The state of a rule that keeps none between iterations."""


# --- helpers -------------------------------------------------------------------------------------


def clip_by_norm(updates: np.ndarray, max_norm: float, *, owned: bool = False) -> np.ndarray:
    """Row-wise clip(x, c) = x * c / ||x|| if ||x|| > c, else x (spec 3.2 and 3.7).

    Args:
        updates: (K, P) array; not modified unless ``owned``.
        max_norm: c >= 0, the largest Euclidean norm a row may keep.
        owned: ``updates`` is a float32 array the caller made and nothing else holds: it is
            scaled in place, or returned as it is when no row is over c (the same floats, one
            (K, P) pass and allocation fewer).

    Returns:
        (K, P) float32. Norms are computed in float64; after the cast to float32 a clipped row's
        norm is c up to float32 rounding (relative 1e-6).

    >>> clip_by_norm(np.array([[6.0, 8.0], [1.0, 0.0]], np.float32), 5.0).tolist()
    [[3.0, 4.0], [1.0, 0.0]]
    """
    x = arrays.float32(updates)
    norms = np.sqrt(arrays.row_sq_norms(x))  # (K,) on the host; BLAS-speed, float32 sums
    over = norms > max_norm
    if not over.any():
        return x if owned or x is not updates else arrays.copy(x)
    scale = np.ones_like(norms)
    scale[over] = max_norm / norms[over]
    return arrays.scale_rows(x, scale, in_place=owned and x is updates)


_weighted_sum = arrays.weighted_sum  # sum_i weights_i * updates_i, (P,) float32: one gemv


def _norm(v: arrays.Array) -> float:
    """||v|| of a (P,) float32 vector: the root taken in float32, as the rules always have."""
    if arrays.is_tensor(v):
        return float(v.dot(v).sqrt())
    return float(np.sqrt(np.dot(v, v)))


def _estimate_of(step: Step) -> np.ndarray:
    """g_est: ``step.estimate`` if a rule set it, else the weighted sum with the current weights."""
    if step.estimate is not None:
        return step.estimate
    return _weighted_sum(step.weights, step.updates)


def _empty(params: np.ndarray) -> EmptyState:
    return EmptyState()


BOTH = ("numpy", "torch")  # every rule here runs on either backend (rayfl.aggregation.arrays)


def _stateless(update: Callable[[Step], Step], stage: str = "updates") -> Rule:
    """Wraps a pure ``Step -> Step`` function as a Rule with :class:`EmptyState`."""

    def update_rule(step: Step, state: EmptyState, params: np.ndarray) -> tuple[Step, EmptyState]:
        return update(step), state

    return Rule(_empty, update_rule, stage, backends=BOTH)


# --- the rules, in the order of spec section 3 ---------------------------------------------------


def mean() -> Rule:
    """Uniform weights 1/K: the plain average of K-async SGD (Dutta et al. 2018; spec section 1).

    Sets ``weights``. State: :class:`EmptyState`.
    """

    def update(step: Step) -> Step:
        k = step.updates.shape[0]
        return dataclasses.replace(step, weights=np.full(k, 1.0 / k))

    return _stateless(update)


class MomentumState(NamedTuple):
    """momentum_clip's state: g_{t-1}, the direction the server last applied (None before any)."""

    previous: np.ndarray | None


def momentum_clip(alpha: float = 0.1, c1: float = 100.0) -> Rule:
    """Momentum and clip (spec 3.2): g_i <- clip(g_i + alpha * g_{t-1}, C1).

    g_{t-1} is the direction of the last step the server applied, kept in the rule's own state
    (:class:`MomentumState`, set by ``commit``: a candidate that judgement rejects does not
    move it); at t = 0 (None) the momentum term is skipped, which is the spec's g_{t-1} = 0.
    Replaces ``updates``.

    Args:
        alpha: momentum coefficient, >= 0.
        c1: clip norm C1, > 0.
    """
    alpha = check_real(
        "aggregation.rules.momentum_clip.alpha", alpha, low=0.0, fix="use a momentum >= 0, e.g. 0.1"
    )
    c1 = check_real(
        "aggregation.rules.momentum_clip.c1",
        c1,
        low=0.0,
        low_open=True,
        fix="use a norm > 0, e.g. 100",
    )

    def init(params: np.ndarray) -> MomentumState:
        return MomentumState(None)

    def update(step: Step, state: MomentumState, params: np.ndarray) -> tuple[Step, MomentumState]:
        g = arrays.float32(step.updates)  # (K, P)
        writable = step.updates_writable and g is step.updates  # the server's own stack
        owned = writable
        if state.previous is not None and alpha != 0.0:
            shift = np.float32(alpha) * arrays.float32(state.previous)[None, :]
            g = arrays.add(g, shift, in_place=writable)  # the same floats either way
            owned = True  # a new array, or the writable stack: clip may scale it in place
        return dataclasses.replace(step, updates=clip_by_norm(g, c1, owned=owned)), state

    def commit(step: Step, state: MomentumState, params: np.ndarray) -> MomentumState:
        return MomentumState(step.direction)

    return Rule(init, update, "updates", commit, backends=BOTH)


def staleness_weights(lam: float = 1.0 - math.log(2.0)) -> Rule:
    """Staleness weights (spec 3.3): s_i = exp(-lam * tau_i) / sum_j exp(-lam * tau_j).

    With the default lam = 1 - ln 2, s_i is proportional to (e/2)^(-tau_i). Computed as a stable
    softmax (the largest exponent is subtracted first), so huge staleness cannot overflow or give
    0/0. Sets ``weights`` (replacing any earlier ones) and records ``agg/max_weight`` = max_i s_i,
    how much the freshest update dominates g_est (paper Fig. 9). State: :class:`EmptyState`.

    Args:
        lam: decay per iteration of staleness, >= 0 (0 gives uniform weights).
    """
    lam = check_real(
        "aggregation.rules.staleness_weights.lam", lam, low=0.0, fix="use a decay >= 0, e.g. 0.307"
    )

    def update(step: Step) -> Step:
        z = -lam * np.asarray(step.staleness, dtype=np.float64)  # (K,)
        e = np.exp(z - z.max())
        s = e / e.sum()
        return dataclasses.replace(step, weights=s).with_metrics(
            **{"agg/max_weight": float(s.max())}
        )

    return _stateless(update)


def estimate() -> Rule:
    """Estimated gradient (spec 3.4): g_est = sum_i weights_i * g_i.

    Run it right after ``staleness_weights`` so that g_est uses s_i. Sets ``estimate`` (P,)
    float32. State: :class:`EmptyState`.
    """

    def update(step: Step) -> Step:
        return dataclasses.replace(step, estimate=_weighted_sum(step.weights, step.updates))

    return _stateless(update)


def similarity_select(c_min: float = 0.3, beta: float = 10.0) -> Rule:
    """Similarity selection and reweighting (spec 3.5-3.6).

    c_i = cos(g_i, g_est) (0 when g_i or g_est is the zero vector); S = {i : c_i >= c_min and
    weights_i > 0} (a client whose weight is already 0 contributes nothing, so it is not counted as
    selected; with staleness weights every s_i > 0 and S is the spec's set). If S is empty the
    weights stay as they are, so that ``weighted_sum`` gives g_t = g_est (unless ``stage_two_clip``
    clips an update in between). Otherwise p_i = exp(beta * c_i) * weights_i / Z over S, 0
    outside, computed stably (the largest beta * c_i over S is subtracted first).

    Uses ``step.estimate``; if no rule set it, g_est is computed from the current weights and
    stored. Sets ``weights`` and records ``agg/selected`` = |S| (0 when empty) and
    ``agg/similarity_mean`` = mean_i c_i over all K. State: :class:`EmptyState`.

    Args:
        c_min: least cosine similarity to be selected, in [-1, 1].
        beta: sharpness of the similarity reweighting, >= 0.
    """
    c_min = check_real(
        "aggregation.rules.similarity_select.c_min",
        c_min,
        low=-1.0,
        high=1.0,
        fix="use a cosine in [-1, 1], e.g. 0.3",
    )
    beta = check_real(
        "aggregation.rules.similarity_select.beta",
        beta,
        low=0.0,
        fix="use a sharpness >= 0, e.g. 10",
    )

    def update(step: Step) -> Step:
        g_est = _estimate_of(step)
        g = arrays.float32(step.updates)  # (K, P)
        est = arrays.float32(g_est)  # (P,)
        norms = np.sqrt(arrays.row_sq_norms(g))  # (K,) float64 on the host, as below
        denom = norms * _norm(est)  # (K,)
        dots = arrays.row_dots(g, est)
        cos = np.zeros_like(denom)
        np.divide(dots, denom, out=cos, where=denom > 0)
        cos = np.clip(cos, -1.0, 1.0)

        w = np.asarray(step.weights, dtype=np.float64)
        selected = (cos >= c_min) & (w > 0)
        if selected.any():
            logits = beta * cos
            p = np.where(selected, np.exp(logits - logits[selected].max()) * w, 0.0)
            w = p / p.sum()
        return dataclasses.replace(step, weights=w, estimate=g_est).with_metrics(
            **{"agg/selected": float(selected.sum()), "agg/similarity_mean": float(cos.mean())}
        )

    return _stateless(update)


def stage_two_clip(c2: float = 10.0, t2: int = 1000) -> Rule:
    """Stage-two clip (spec 3.7): from iteration t2 on, g_i <- clip(g_i, C2 * ||g_est||).

    The bound uses the norm of the real estimate g_est (``step.estimate``, or computed from the
    current weights and stored if no rule set it); the public WKAFL code computes it from a zeroed
    buffer, which we do not copy. Before t2 the rule is the identity. Replaces ``updates``.
    State: :class:`EmptyState`.

    Args:
        c2: multiple of ||g_est|| an update may reach, > 0.
        t2: first iteration of stage two, >= 0.
    """
    c2 = check_real(
        "aggregation.rules.stage_two_clip.c2",
        c2,
        low=0.0,
        low_open=True,
        fix="use a factor > 0, e.g. 10",
    )
    t2 = check_int(
        "aggregation.rules.stage_two_clip.t2", t2, low=0, fix="use an iteration >= 0, e.g. 1000"
    )

    def update(step: Step) -> Step:
        if step.iteration < t2:
            return step
        g_est = _estimate_of(step)
        bound = c2 * _norm(arrays.float32(g_est))
        return dataclasses.replace(step, updates=clip_by_norm(step.updates, bound), estimate=g_est)

    return _stateless(update)


def weighted_sum() -> Rule:
    """The aggregate (spec 3.8): g_t = sum_i weights_i * g_i (p_i over S for WKAFL).

    Sets ``direction`` (P,) float32, accumulated in float64. State: :class:`EmptyState`.
    """

    def update(step: Step) -> Step:
        return dataclasses.replace(step, direction=_weighted_sum(step.weights, step.updates))

    return _stateless(update, "aggregate")


def staleness_lr(gamma: float = 0.1, form: str = "inverse") -> Rule:
    """Staleness-aware learning rate (spec 3.9), tau_min = min_i tau_i, eta = ``step.lr``.

        - ``"inverse"`` (default): eta_t = eta / (1 + gamma * tau_min).
        - ``"power"`` (the paper's eta * tau_min^(-gamma)): eta_t = eta * max(tau_min, 1)^(-gamma);
          the max(., 1) guard keeps eta_t = eta when the freshest update has tau_min = 0, where
          0^(-gamma) would be infinite.

        Sets ``lr`` and records ``agg/lr``. Put exactly one lr rule at the end of a chain: ``step.lr``
        is the base rate only until an lr rule has run (a chain holds at most one lr rule, at its end:
    stage ``lr``). State: :class:`EmptyState`.

        Args:
            gamma: decay exponent/rate, >= 0.
            form: ``"inverse"`` or ``"power"``.
    """
    gamma = check_real(
        "aggregation.rules.staleness_lr.gamma", gamma, low=0.0, fix="use a rate >= 0, e.g. 0.1"
    )
    if form not in LR_FORMS:
        fail(
            "aggregation.rules.staleness_lr.form",
            form,
            "is not a known form",
            f"use one of {', '.join(LR_FORMS)}",
        )

    def update(step: Step) -> Step:
        tau_min = float(np.min(step.staleness))
        if form == "inverse":
            lr = step.lr / (1.0 + gamma * tau_min)
        else:
            lr = step.lr * max(tau_min, 1.0) ** (-gamma)
        return dataclasses.replace(step, lr=float(lr)).with_metrics(**{"agg/lr": float(lr)})

    return _stateless(update, "lr")


def constant_lr() -> Rule:
    """Fixed learning rate (K-async SGD): eta_t = eta. Leaves ``lr`` and records ``agg/lr``.

    Exists so that every recipe ends with exactly one lr rule and records ``agg/lr``.
    State: :class:`EmptyState`.
    """

    def update(step: Step) -> Step:
        return step.with_metrics(**{"agg/lr": float(step.lr)})

    return _stateless(update, "lr")


# --- the shipped rules, by name ------------------------------------------------------------------

RULES: dict[str, Callable[..., Rule]] = {
    "mean": mean,
    "momentum_clip": momentum_clip,
    "staleness_weights": staleness_weights,
    "estimate": estimate,
    "similarity_select": similarity_select,
    "stage_two_clip": stage_two_clip,
    "weighted_sum": weighted_sum,
    "staleness_lr": staleness_lr,
    "constant_lr": constant_lr,
}
