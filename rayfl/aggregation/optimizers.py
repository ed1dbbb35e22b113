"""Server optimizers: how the server turns w_t and the chain's step into w_{t+1}.

A :class:`~rayfl.aggregation.base.ServerOptimizer` is ``init(params) -> state`` and
``apply(step, state, params) -> (new_params, state)``: it sees the final :class:`Step` of the
rule chain (g_t in ``step.direction``, eta_t in ``step.lr``) and the current model w_t, so plain
SGD, server momentum, adaptive server optimizers (FedAdam, FedYogi) and mixing rules (FedAsync)
all fit. Its state is checkpointed with the run; a candidate that judgement rejects leaves it
as it was.

g_t is a *descent* direction: in the synchronous engine the (weighted) mean of the
pseudo-gradients w_t - w_i, in the K-async engine the aggregated (pseudo-)gradient. Reddi et al.
write the step the other way round, Delta_t = -g_t. The shipped optimizers:

- ``sgd``: w_{t+1} = w_t - eta * g_t.
- ``fedavgm`` (server momentum; Hsu, Qi, Brown, "Measuring the effects of non-identical data
  distribution for federated visual classification", arXiv 1909.06335, 2019; FedAvgM in Reddi
  et al. 2021): m_t = mu * m_{t-1} + g_t, w_{t+1} = w_t - eta * m_t (Nesterov:
  w_t - eta * (g_t + mu * m_t)); m_{-1} = 0.
- ``fedadagrad``, ``fedadam``, ``fedyogi`` (Reddi, Charles, Zaheer, Garrett, Rush, Konecny,
  Kumar, McMahan, "Adaptive Federated Optimization", ICLR 2021, arXiv 2003.00295, Algorithm 2):
  m_t = beta1 * m_{t-1} + (1 - beta1) * Delta_t and w_{t+1} = w_t + eta * m_t / (sqrt(v_t) + tau),
  with the second moment
  FedAdagrad v_t = v_{t-1} + Delta_t^2,
  FedAdam    v_t = beta2 * v_{t-1} + (1 - beta2) * Delta_t^2,
  FedYogi    v_t = v_{t-1} - (1 - beta2) * Delta_t^2 * sign(v_{t-1} - Delta_t^2);
  m_{-1} = 0 and v_{-1} = tau^2 (the paper asks v_{-1} >= tau^2), no bias correction (the paper
  has none).
- ``fedasync`` (Xie, Koyejo, Gupta, "Asynchronous Federated Optimization", OPT 2020, arXiv
  1903.03934): w_{t+1} = (1 - alpha_t) * w_t + alpha_t * x_new with alpha_t = alpha * s(t - tau),
  x_new the client's local model and s a staleness function (constant, polynomial, hinge).

All of them compute in float32, as the server always has; their states are (P,) float32 arrays
in NamedTuples, which a checkpoint stores without pickle.

Configs name one with ``aggregation.optimizer`` (a shipped name or an import path).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from rayfl.aggregation import arrays
from rayfl.aggregation.base import ServerOptimizer, Step
from rayfl.errors import RayflError
from rayfl.validation import check_int, check_real, fail

FIELD = "aggregation.optimizer"
BOTH = ("numpy", "torch")  # the optimizers that run on either backend (rayfl.aggregation.arrays)


class NoState(NamedTuple):
    """The state of an optimizer that keeps none."""


class ServerMomentumState(NamedTuple):
    """fedavgm's state: the momentum buffer m_{t-1}, (P,) float32 (zeros before any step)."""

    momentum: np.ndarray


class AdaptiveState(NamedTuple):
    """The state of fedadagrad, fedadam and fedyogi: the moments m_{t-1} and v_{t-1}, (P,)
    float32 each (m_{-1} = 0, v_{-1} = tau^2)."""

    m: np.ndarray
    v: np.ndarray


# --- helpers -------------------------------------------------------------------------------------


def _direction(step: Step) -> np.ndarray:
    """g_t as float32; the chain always sets it before the optimizer runs."""
    assert step.direction is not None
    return arrays.float32(step.direction)


def _check_decay(name: str, param: str, value: float, example: float) -> float:
    """A momentum or decay rate in [0, 1)."""
    return check_real(
        f"{FIELD}.{name}.{param}",
        value,
        low=0.0,
        high=1.0,
        high_open=True,
        fix=f"use a rate in [0, 1), e.g. {example:g}",
    )


def _rate_pair(rate: float) -> tuple[np.float32, np.float32]:
    """(rate, 1 - rate) as float32, the complement taken in float64 first: 1 - float32(0.99)
    is 1e-6 off 0.01, which a run would carry in every step."""
    return np.float32(rate), np.float32(1.0 - rate)


def _check_tau(name: str, tau: float) -> float:
    """The adaptivity tau > 0 (it keeps the denominator sqrt(v_t) + tau off zero)."""
    return check_real(
        f"{FIELD}.{name}.tau",
        tau,
        low=0.0,
        low_open=True,
        fix="use an adaptivity > 0, e.g. 1e-3 (Reddi et al. tune it in 1e-9 .. 1e-1)",
    )


def _check_bool(field: str, value: bool) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        fail(field, value, f"must be true or false, got {type(value).__name__}", "write true/false")
    return bool(value)


# --- the optimizers ------------------------------------------------------------------------------


def sgd() -> ServerOptimizer:
    """Plain SGD on the aggregated direction: w_{t+1} = w_t - eta_t * g_t (AKAFL-RJ, WKAFL,
    K-async SGD). float32 throughout, as the server has always computed it."""

    def init(params: np.ndarray) -> NoState:
        return NoState()

    def apply(step: Step, state: NoState, params: np.ndarray) -> tuple[np.ndarray, NoState]:
        assert step.direction is not None  # the chain always sets it
        new = arrays.float32(params - np.float32(step.lr) * step.direction)
        return new, state

    return ServerOptimizer(init, apply, BOTH)


def fedavgm(momentum: float = 0.9, nesterov: bool = False) -> ServerOptimizer:
    """Server momentum (FedAvgM; Hsu et al. 2019, Reddi et al. 2021):
    m_t = momentum * m_{t-1} + g_t and w_{t+1} = w_t - eta_t * m_t, or with ``nesterov``
    w_{t+1} = w_t - eta_t * (g_t + momentum * m_t). m_{-1} = 0, so the first step is SGD's
    (Nesterov's: (1 + momentum) times it). State: :class:`ServerMomentumState`.

    Args:
        momentum: mu in [0, 1); 0 is plain SGD.
        nesterov: look ahead along the momentum, as torch.optim.SGD(nesterov=True) does.
    """
    mu = np.float32(_check_decay("fedavgm", "momentum", momentum, 0.9))
    nesterov = _check_bool(f"{FIELD}.fedavgm.nesterov", nesterov)

    def init(params: np.ndarray) -> ServerMomentumState:
        return ServerMomentumState(arrays.zeros(params))

    def apply(
        step: Step, state: ServerMomentumState, params: np.ndarray
    ) -> tuple[np.ndarray, ServerMomentumState]:
        g = _direction(step)
        m = mu * state.momentum + g
        move = g + mu * m if nesterov else m
        new = params - np.float32(step.lr) * move
        return arrays.float32(new), ServerMomentumState(m)

    return ServerOptimizer(init, apply, BOTH)


SecondMoment = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""(v_{t-1}, Delta_t^2) -> v_t, all (P,) float32: what tells FedAdagrad, FedAdam, FedYogi apart."""


def _adaptive(beta1: float, tau: float, second_moment: SecondMoment) -> ServerOptimizer:
    """Reddi et al.'s Algorithm 2, with the second moment v_t left to ``second_moment``."""
    b1, one_minus_b1 = _rate_pair(beta1)
    tau32 = np.float32(tau)

    def init(params: np.ndarray) -> AdaptiveState:
        zeros = arrays.zeros(params)
        # v_{-1} = tau^2: the least the paper allows, so that the first step is not damped more
        # than tau already damps it. (0 + tau^2 is tau^2 exactly, on either backend.)
        return AdaptiveState(zeros, zeros + tau32 * tau32)

    def apply(
        step: Step, state: AdaptiveState, params: np.ndarray
    ) -> tuple[np.ndarray, AdaptiveState]:
        delta = -_direction(step)  # Reddi et al.'s Delta_t: the ascent-signed model change
        m = b1 * state.m + one_minus_b1 * delta
        v = second_moment(state.v, delta * delta)
        new = params + np.float32(step.lr) * m / (arrays.xp(v).sqrt(v) + tau32)
        return arrays.float32(new), AdaptiveState(m, v)

    return ServerOptimizer(init, apply, BOTH)


def fedadagrad(beta1: float = 0.9, tau: float = 1e-3) -> ServerOptimizer:
    """FedAdagrad (Reddi et al. 2021, Algorithm 2): v_t = v_{t-1} + Delta_t^2, then
    w_{t+1} = w_t + eta_t * m_t / (sqrt(v_t) + tau) with m_t = beta1 * m_{t-1} +
    (1 - beta1) * Delta_t and Delta_t = -g_t. v_{-1} = tau^2. State: :class:`AdaptiveState`.

    Args:
        beta1: first-moment decay in [0, 1) (the paper's 0.9; 0 uses Delta_t as it is).
        tau: adaptivity > 0, the smallest denominator.
    """
    b1 = _check_decay("fedadagrad", "beta1", beta1, 0.9)
    tau = _check_tau("fedadagrad", tau)

    def accumulate(v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        return v + delta_sq

    return _adaptive(b1, tau, accumulate)


def fedadam(beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3) -> ServerOptimizer:
    """FedAdam (Reddi et al. 2021, Algorithm 2): v_t = beta2 * v_{t-1} + (1 - beta2) *
    Delta_t^2, then the update of :func:`fedadagrad`. No bias correction of m_t or v_t: the
    paper has none (tau and v_{-1} = tau^2 keep the early steps bounded instead).
    State: :class:`AdaptiveState`.

    Args:
        beta1: first-moment decay in [0, 1) (the paper's 0.9).
        beta2: second-moment decay in [0, 1) (the paper's 0.99).
        tau: adaptivity > 0, the smallest denominator.
    """
    b1 = _check_decay("fedadam", "beta1", beta1, 0.9)
    b2, one_minus_b2 = _rate_pair(_check_decay("fedadam", "beta2", beta2, 0.99))
    tau = _check_tau("fedadam", tau)

    def average(v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        return b2 * v + one_minus_b2 * delta_sq

    return _adaptive(b1, tau, average)


def fedyogi(beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3) -> ServerOptimizer:
    """FedYogi (Reddi et al. 2021, Algorithm 2): v_t = v_{t-1} - (1 - beta2) * Delta_t^2 *
    sign(v_{t-1} - Delta_t^2), then the update of :func:`fedadagrad`: v moves towards
    Delta_t^2 by an additive step rather than Adam's multiplicative one. No bias correction.
    State: :class:`AdaptiveState`.

    Args:
        beta1: first-moment decay in [0, 1) (the paper's 0.9).
        beta2: second-moment rate in [0, 1) (the paper's 0.99).
        tau: adaptivity > 0, the smallest denominator.
    """
    b1 = _check_decay("fedyogi", "beta1", beta1, 0.9)
    _, one_minus_b2 = _rate_pair(_check_decay("fedyogi", "beta2", beta2, 0.99))
    tau = _check_tau("fedyogi", tau)

    def yogi(v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        return v - one_minus_b2 * delta_sq * arrays.xp(v).sign(v - delta_sq)

    return _adaptive(b1, tau, yogi)


# --- FedAsync ------------------------------------------------------------------------------------


def _constant(d: int, a: float, b: int) -> float:
    return 1.0


def _polynomial(d: int, a: float, b: int) -> float:
    return (d + 1.0) ** -a


def _hinge(d: int, a: float, b: int) -> float:
    return 1.0 if d <= b else 1.0 / (a * (d - b) + 1.0)


STALENESS_FUNCTIONS: dict[str, Callable[[int, float, int], float]] = {
    "constant": _constant,
    "polynomial": _polynomial,
    "hinge": _hinge,
}
"""FedAsync's s(d) of the staleness d = t - tau (Xie et al. 2019), by name:
constant 1; polynomial (d + 1)^(-a); hinge 1 if d <= b else 1 / (a * (d - b) + 1)."""


def _local_models(step: Step, params: np.ndarray) -> np.ndarray:
    """The K clients' local models, (K, P) float32; a RayflError where the engine has none."""
    if step.local_models is None:
        raise RayflError(
            f"{FIELD}=fedasync mixes the clients' local models, which this engine cannot give "
            "(Step.local_models is None): use an engine that makes them, or another optimizer"
        )
    models = np.asarray(step.local_models(), dtype=np.float32)
    expected = (len(step.staleness), np.size(params))
    if models.shape != expected:
        raise RayflError(
            f"{FIELD}=fedasync: the engine gave local models of shape {models.shape}, not "
            f"{expected} (one row per update, one column per parameter)"
        )
    return models


def fedasync(
    alpha: float = 0.6, staleness: str = "polynomial", a: float = 0.5, b: int = 4
) -> ServerOptimizer:
    """FedAsync's mixing (Xie, Koyejo, Gupta 2019): w_{t+1} = (1 - alpha_t) * w_t +
    alpha_t * x_new with alpha_t = alpha * s(d), d = ``step.staleness`` of the update and s one
    of :data:`STALENESS_FUNCTIONS`.

    x_new is the client's local model (``step.local_models()``), not the chain's direction: the
    rules' weights and g_t are not used, nor is the server lr eta_t (alpha_t takes its place).
    The paper mixes one update per iteration (K = 1); with K > 1 the updates are mixed one after
    another in row (arrival) order, each with its own staleness, as if they had arrived in
    successive iterations with the server's version held. State: :class:`NoState`.

    Args:
        alpha: mixing weight in (0, 1] for a fresh update.
        staleness: ``constant``, ``polynomial`` or ``hinge``.
        a: the decay of polynomial and hinge, >= 0 (shared by both; 0.5 is the paper's
            polynomial exponent).
        b: the staleness hinge leaves unpenalised, an integer >= 0.
    """
    alpha = check_real(
        f"{FIELD}.fedasync.alpha",
        alpha,
        low=0.0,
        low_open=True,
        high=1.0,
        fix="use a mixing weight in (0, 1], e.g. 0.6",
    )
    if not isinstance(staleness, str) or staleness not in STALENESS_FUNCTIONS:
        fail(
            f"{FIELD}.fedasync.staleness",
            staleness,
            "is not a staleness function",
            f"use one of {', '.join(STALENESS_FUNCTIONS)}",
        )
    a = check_real(f"{FIELD}.fedasync.a", a, low=0.0, fix="use a decay >= 0, e.g. 0.5")
    b = check_int(f"{FIELD}.fedasync.b", b, low=0, fix="use a staleness >= 0, e.g. 4")
    s = STALENESS_FUNCTIONS[staleness]

    def init(params: np.ndarray) -> NoState:
        return NoState()

    def apply(step: Step, state: NoState, params: np.ndarray) -> tuple[np.ndarray, NoState]:
        w = np.asarray(params, dtype=np.float32)
        for x_new, d in zip(_local_models(step, params), step.staleness, strict=True):
            alpha_t, one_minus_alpha_t = _rate_pair(alpha * s(int(d), a, b))
            w = one_minus_alpha_t * w + alpha_t * x_new
        return w.astype(np.float32, copy=False), state

    return ServerOptimizer(init, apply)


OPTIMIZERS: dict[str, Callable[..., ServerOptimizer]] = {
    "sgd": sgd,
    "fedavgm": fedavgm,
    "fedadagrad": fedadagrad,
    "fedadam": fedadam,
    "fedyogi": fedyogi,
    "fedasync": fedasync,
}
"""The shipped server optimizers, by name."""
