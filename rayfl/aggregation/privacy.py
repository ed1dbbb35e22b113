"""Differential privacy for federated averaging (DP-FedAvg; McMahan et al., ICLR 2018).

McMahan, Ramage, Talwar and Zhang, "Learning differentially private recurrent language models":
each selected client's update is clipped to L2 norm <= S, the server averages them with uniform
weights and adds Gaussian noise to the average, and a privacy accountant says how much privacy
(epsilon at delta, user level: one client's whole data) the rounds so far have spent. Two rules:

- ``dp_clip`` (stage ``updates``): clips each update to norm S and sets uniform weights 1/K;
- ``dp_noise`` (stage ``direction``): g_t = (1/K) sum_i clip(Delta_i) + N(0, (z S / K)^2 I) and
  the running epsilon, recorded as ``dp/epsilon``.

A preset for the synchronous engine (``selection.kind: random``, optimizer ``sgd`` with lr 1)::

    aggregation:
      rules:
        - dp_clip: {clip_norm: 1.0}
        - dp_noise: {noise_multiplier: 1.0, clip_norm: 1.0}
        - constant_lr

Accounting. The synchronous engine samples a fixed-size set of K of the N clients uniformly
without replacement, so the accountant composes, once per round, dp-accounting's
``SampledWithoutReplacementDpEvent(N, K, GaussianDpEvent(.))`` in an ``RdpAccountant`` under the
*replace-one* neighbouring relation (the only one that event supports; Wang, Balle and
Kasiviswanathan, AISTATS 2019, Theorem 27). Replace-one datasets differ in one client's data, so
that client's clipped update may move from u to -u: the sum's sensitivity is 2S, not the S of
add-or-remove. dp-accounting (0.6 and earlier) reads the Gaussian event's multiplier as noise
std / sensitivity for that event, so the event carries z / 2 (google/differential-privacy issue
378); :func:`epsilon` checks which reading the installed library has. These epsilons are not
those of the paper, which samples each client independently (Poisson) and counts add-or-remove
neighbours: for the same z they are larger.

dp-accounting is an optional dependency (``pip install 'rayfl[dp]'``), imported only by
:func:`epsilon` and the ``dp_noise`` factory.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from rayfl import seeding
from rayfl.aggregation.base import Rule, Step, final_direction
from rayfl.aggregation.rules import _stateless, clip_by_norm
from rayfl.errors import ConfigError, RayflError
from rayfl.validation import check_real, fail

CLIP_FIELD = "aggregation.rules.dp_clip"
NOISE_FIELD = "aggregation.rules.dp_noise"
ACCOUNTANTS = ("rdp",)
INSTALL = "pip install 'rayfl[dp]'"
DEFAULT_DELTA_EXPONENT = 1.1  # delta = None means 1 / N^1.1
# How far past S a clipped update's norm may lie: clip_by_norm measures norms with float32 sums,
# off by ~1e-5 relative over 10^5 entries (seen: 0.100002 for S = 0.1); 1e-3 of S is far below
# anything that changes an epsilon.
CLIP_SLACK = 1e-3


class NoiseState(NamedTuple):
    """dp_noise's state: how many noised steps it has released (all the accountant needs)."""

    steps: int


# --- the rules -----------------------------------------------------------------------------------


def dp_clip(clip_norm: float = 1.0) -> Rule:
    """DP-FedAvg's clip: Delta_i <- clip(Delta_i, S) and uniform weights 1/K.

    McMahan et al.'s DP-FedAvg with uniform client weights and their *fixed denominator*
    estimator: the sum of the clipped updates is divided by the number of clients sampled, K,
    which the synchronous engine fixes in advance, never by a data-dependent total weight (the
    FedAvg weights |D_i| / sum_j |D_j| would let one client's data size move every other
    client's weight). So one client moves g_t by at most 2S / K (replace-one), the bound
    ``dp_noise`` calibrates its noise to.

    Replaces ``updates`` and ``weights``, and records ``dp/clipped_fraction``, the fraction of the
    K updates whose norm exceeded S. State: :class:`~rayfl.aggregation.rules.EmptyState`.

    Args:
        clip_norm: S, the largest L2 norm an update may keep, > 0.
    """
    clip_norm = _checked_clip_norm(CLIP_FIELD, clip_norm)

    def update(step: Step) -> Step:
        k = step.updates.shape[0]
        clipped = float(np.mean(_row_norms(step.updates) > clip_norm))
        return dataclasses.replace(
            step, updates=clip_by_norm(step.updates, clip_norm), weights=np.full(k, 1.0 / k)
        ).with_metrics(**{"dp/clipped_fraction": clipped})

    return _stateless(update)


def _checked_noise_params(
    noise_multiplier: float, clip_norm: float, delta: float | None, accountant: str
) -> tuple[float, float, float | None]:
    """dp_noise's parameters, checked (one-line ConfigErrors naming the field)."""
    z = check_real(
        f"{NOISE_FIELD}.noise_multiplier",
        noise_multiplier,
        low=0.0,
        fix="use a noise multiplier >= 0, e.g. 1.0",
    )
    clip_norm = _checked_clip_norm(NOISE_FIELD, clip_norm)
    if delta is not None:
        delta = check_real(
            f"{NOISE_FIELD}.delta",
            delta,
            low=0.0,
            high=1.0,
            low_open=True,
            high_open=True,
            fix="use a probability in (0, 1), e.g. 1e-5, or leave it out for 1 / N^1.1",
        )
    if accountant not in ACCOUNTANTS:
        fail(
            f"{NOISE_FIELD}.accountant",
            accountant,
            "is not a known accountant",
            f"use one of {', '.join(ACCOUNTANTS)}",
        )
    return z, clip_norm, delta


def dp_noise(
    noise_multiplier: float = 1.0,
    clip_norm: float = 1.0,
    delta: float | None = None,
    accountant: str = "rdp",
) -> Rule:
    """DP-FedAvg's noise: g_t <- g_t + N(0, (z S / K)^2 I), and the privacy spent so far.

    g_t is the chain's direction so far (:func:`~rayfl.aggregation.base.final_direction`: with
    ``dp_clip`` before it, (1/K) sum_i clip(Delta_i, S)). The noise is drawn in float32 from
    ``seeding.rng(seed, DP_NOISE, t)``: a run's seed and the iteration fix it. The rule checks
    its premise on every step (uniform weights, every update within S: ``dp_clip`` with the
    same ``clip_norm`` stands before it) and fails rather than report an epsilon that does not
    hold. An aggregate rule other than ``weighted_sum`` between them voids the accounting.

    Records ``dp/noise_std`` = z S / K and ``dp/epsilon``, epsilon at ``delta`` after the steps
    so far (:func:`epsilon`, with sampling rate q = K / N, N = ``step.num_clients``; inf for
    z = 0, where nothing is private). Sets ``direction``. State: :class:`NoiseState`, the number
    of noised steps. epsilon is computed from that count on every step (n identical rounds have
    n times one round's RDP; one round's is computed once per process and cached outside the
    state), so a step costs the same at round 1 and round 10 000, and a resumed run records the
    same numbers as an unbroken one. The accounting assumes every round samples the same K of
    the same N (the synchronous engine's fixed-size sampling): the epsilon recorded is that of
    that many rounds like the current one.

    Args:
        noise_multiplier: z, the noise std in units of S / K, >= 0 (0: no noise, no privacy).
        clip_norm: S, the norm ``dp_clip`` clips to, > 0.
        delta: the delta epsilon is reported at, in (0, 1). None: 1 / N^1.1, a little below
            1 / N (a delta of 1 / N or more allows releasing one client's data outright) for
            every population size.
        accountant: ``"rdp"`` (Renyi DP, dp-accounting's ``RdpAccountant``), the only one yet.
    """
    z, clip_norm, delta = _checked_noise_params(noise_multiplier, clip_norm, delta, accountant)
    _dp_accounting()  # a missing library fails when the config is built, not at step 1

    def init(params: np.ndarray) -> NoiseState:
        return NoiseState(0)

    def update(step: Step, state: NoiseState, params: np.ndarray) -> tuple[Step, NoiseState]:
        k, n = step.updates.shape[0], _population(step)
        _check_clipped(step, clip_norm)
        std = z * clip_norm / k
        noise = seeding.rng(step.seed, seeding.DP_NOISE, step.iteration).standard_normal(
            step.updates.shape[1], dtype=np.float32
        )
        direction = final_direction(step) + np.float32(std) * noise
        steps = state.steps + 1
        at = default_delta(n) if delta is None else delta
        eps = epsilon(z, k, n, steps, at)
        return dataclasses.replace(step, direction=direction).with_metrics(
            **{"dp/epsilon": eps, "dp/delta": at, "dp/noise_std": std}
        ), NoiseState(steps)

    return Rule(init, update, "direction")


# --- the accountant ------------------------------------------------------------------------------


def epsilon(
    noise_multiplier: float, sample_size: int, population: int, steps: int, delta: float
) -> float:
    """Epsilon at ``delta`` after ``steps`` rounds of DP-FedAvg (RDP accountant, replace-one).

    Each round samples ``sample_size`` (K) of ``population`` (N) clients uniformly without
    replacement, clips their updates to norm S and adds N(0, (z S)^2 I) to their sum (or
    N(0, (z S / K)^2 I) to their mean): ``SampledWithoutReplacementDpEvent(N, K,
    GaussianDpEvent(z / 2))`` under replace-one, composed ``steps`` times (the module docstring
    says why z / 2). The single place that talks to dp-accounting, with :func:`_one_round`.

    RDP composes additively, so n identical rounds have n times one round's RDP at every order:
    one round's RDP is computed once per (z, K, N) and cached (it is the costly part, about
    0.2-1 s), and every later step costs only the conversion to epsilon (a millisecond). The
    result is exactly what a fresh ``RdpAccountant`` composing the event ``steps`` times at once
    gives.

    Returns:
        epsilon >= 0; 0.0 after no steps, inf for z = 0 (no noise).

    Raises:
        ConfigError: dp-accounting is not installed.
        ValueError: K outside 1..N, steps < 0 or delta outside (0, 1).
    """
    if not 1 <= sample_size <= population:
        raise ValueError(f"sample_size={sample_size} must lie in 1..population={population}")
    if steps < 0 or not 0.0 < delta < 1.0:
        raise ValueError(f"steps={steps} must be >= 0 and delta={delta} in (0, 1)")
    if steps == 0:
        return 0.0
    if noise_multiplier == 0.0:
        return math.inf
    dpa = _dp_accounting()
    one = _one_round(float(noise_multiplier), int(sample_size), int(population))
    if one is None:  # a library without the accountant's arrays: compose the rounds afresh
        accountant = _accountant()
        accountant.compose(_round_event(noise_multiplier, sample_size, population), steps)
        return float(accountant.get_epsilon(delta))
    orders, rdp = one
    # compose(event, n) on a fresh accountant makes 0 + n * rdp; so does this
    return float(dpa.rdp.compute_epsilon(orders, steps * rdp, delta)[0])


@functools.lru_cache(maxsize=64)
def _one_round(
    noise_multiplier: float, sample_size: int, population: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """(orders, RDP at each order) of one round, from an accountant that composed it once; None
    where the accountant does not keep them as ``_orders`` and ``_rdp`` (dp-accounting 0.4 to
    0.6 does; they are private, hence the check and :func:`epsilon`'s fallback)."""
    accountant = _accountant()
    accountant.compose(_round_event(noise_multiplier, sample_size, population))
    orders, rdp = getattr(accountant, "_orders", None), getattr(accountant, "_rdp", None)
    if orders is None or rdp is None or np.shape(orders) != np.shape(rdp):
        return None
    return np.array(orders, dtype=np.float64), np.array(rdp, dtype=np.float64)


def _round_event(noise_multiplier: float, sample_size: int, population: int) -> Any:
    """One round as a DpEvent: K of N sampled without replacement, then the Gaussian sum."""
    dpa = _dp_accounting()
    gaussian = dpa.GaussianDpEvent(_library_multiplier(noise_multiplier))
    return dpa.SampledWithoutReplacementDpEvent(population, sample_size, gaussian)


def _accountant() -> Any:
    """A fresh RDP accountant under replace-one, the relation its without-replacement
    sampling event requires."""
    dpa = _dp_accounting()
    return dpa.rdp.RdpAccountant(neighboring_relation=dpa.NeighboringRelation.REPLACE_ONE)


def default_delta(population: int) -> float:
    """The delta dp_noise reports epsilon at when none is given: 1 / N^1.1."""
    return float(population) ** -DEFAULT_DELTA_EXPONENT


def _library_multiplier(noise_multiplier: float) -> float:
    """The multiplier the Gaussian event must carry for noise std z S on a sum of updates
    clipped to S: z / 2 where the library reads it as std / sensitivity (replace-one
    sensitivity 2S), z where the library itself counts the 2S."""
    return noise_multiplier if _library_counts_replaced_record_twice() else noise_multiplier / 2


@functools.cache
def _library_counts_replaced_record_twice() -> bool:
    """Whether dp-accounting's sampled-without-replacement Gaussian already takes replace-one's
    sensitivity 2S (the GaussianDpEvent docstring's reading of the multiplier, s / C).

    dp-accounting 0.6 does not (google/differential-privacy issue 378): with the whole
    population sampled its epsilon under replace-one equals the plain Gaussian's under
    add-or-remove. If a later version fixes that, the replace-one epsilon is the larger, and the
    rule must pass z itself, or it would count the 2S twice. (Closed forms, instant.)
    """
    dpa = _dp_accounting()
    replace = _accountant()
    replace.compose(dpa.SampledWithoutReplacementDpEvent(1, 1, dpa.GaussianDpEvent(1.0)))
    add_remove = dpa.rdp.RdpAccountant()
    add_remove.compose(dpa.GaussianDpEvent(1.0))
    return replace.get_epsilon(1e-5) > add_remove.get_epsilon(1e-5) * (1 + 1e-6)


def _dp_accounting() -> Any:
    """The dp_accounting module, or a ConfigError saying how to install it."""
    try:
        import dp_accounting
        import dp_accounting.rdp
    except ImportError:
        raise ConfigError(
            f"{NOISE_FIELD} needs the dp-accounting library for its privacy accountant, which "
            f"is not installed: {INSTALL}"
        ) from None
    return dp_accounting


# --- helpers -------------------------------------------------------------------------------------


def _checked_clip_norm(field: str, clip_norm: Any) -> float:
    return check_real(
        f"{field}.clip_norm", clip_norm, low=0.0, low_open=True, fix="use a norm > 0, e.g. 1.0"
    )


def _row_norms(updates: np.ndarray) -> np.ndarray:
    """(K,) float64 L2 norms of the rows, computed as clip_by_norm computes them."""
    x = np.asarray(updates, dtype=np.float32)
    return np.sqrt(np.einsum("ij,ij->i", x, x).astype(np.float64))


def _population(step: Step) -> int:
    """N, the population the K updates were sampled from; a RayflError if the engine did not
    say or says fewer than K (no sampling rate, no accounting)."""
    k = step.updates.shape[0]
    if step.num_clients < k:
        raise RayflError(
            f"{NOISE_FIELD}: the step says the {k} updates came from num_clients="
            f"{step.num_clients} clients; the accountant needs the population N >= K, so the "
            "engine must set it"
        )
    return step.num_clients


def _check_clipped(step: Step, clip_norm: float) -> None:
    """A RayflError unless the weights are uniform and every update's norm is <= S: the
    sensitivity 2S / K the noise is calibrated to (``dp_clip`` makes both)."""
    k = step.updates.shape[0]
    if not np.allclose(step.weights, 1.0 / k, rtol=1e-9, atol=0.0):
        raise RayflError(
            f"{NOISE_FIELD}: the weights are not uniform 1/K, so its noise does not bound one "
            "client's influence: put dp_clip before it and no weighting rule between them"
        )
    largest = float(_row_norms(step.updates).max(initial=0.0))
    if largest > clip_norm * (1 + CLIP_SLACK):
        raise RayflError(
            f"{NOISE_FIELD}: an update has norm {largest:.6g} > clip_norm={clip_norm:g}: put "
            f"dp_clip with clip_norm: {clip_norm:g} before it"
        )


PRIVACY_RULES: dict[str, Callable[..., Rule]] = {"dp_clip": dp_clip, "dp_noise": dp_noise}
"""The shipped privacy rules, by name."""
