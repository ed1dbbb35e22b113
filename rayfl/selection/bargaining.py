"""Decomposed alternating-offers bargaining and the exact Nash bargaining solutions.

Implements sections 5 and 7 of the incentive spec of record (``specs/incentive.md``) for the
privacy-preserving incentive mechanism of the J-KICS paper ("an incentive mechanism that does not
need the clients' device information"). The paper's equations were lost; the rules below are the
spec's **[reconstructed]** ones, followed exactly.

Bargaining (section 5), one independent bargaining per selected client i, in normalised surplus
units: S_i = cap_i - bid_i >= 0 (cap R_{S,i}, bid R_{i,S}); the client's utility of a price x is
U_i(x) = (x - bid_i) / S_i, the server's U_S(x) = (cap_i - x) / S_i.

- Steps alpha = 0, 1, 2, ...: the server offers at even steps (its k-th offer at alpha = 2k), the
  client at odd steps (its k-th offer at alpha = 2k + 1).
- Targets T_S(k) = max(0, 1 - k * Delta_S), T_i(k) = max(0, 1 - k * Delta_i). The server offers
  x = cap - T_S(k) * S, the client asks x = bid + T_i(k) * S.
- Concession steps Delta_S = beta_S and Delta_i = beta_i * delta_S / delta_i.
- A party accepts an offer when its normalised utility for it is >= its own target at its next
  offer: the client accepts the server's k-th offer iff U_i >= T_i(k); the server accepts the
  client's k-th offer iff U_S >= T_S(k + 1). Comparisons allow :data:`ACCEPT_TOL` so that equal
  steps land on the midpoint despite the binary rounding of k * Delta.
- A_i is the step of the accepted offer (= the number of rejected offers); realised utilities are
  discounted by delta^A.

With equal steps Delta_S = Delta_i = Delta both conditions reduce to alpha * Delta >= 1: the
agreement, at the first such alpha, is the midpoint (the separable NBS) when 1/Delta is an even
integer (the default 0.002: alpha = 500, a server offer), and otherwise within Delta / 2 of it
(an odd alpha is a client's ask, whose share is 1/2 + Delta/2 when 1/Delta is odd).

Nash bargaining (section 7), disagreement point 0:

- separable: NP(x) = prod_i (x_i - bid_i) (cap_i - x_i), maximised by x_i* = (bid_i + cap_i) / 2;
- coupled: the server is one more player whose utility is the total leftover
  sum_i (cap_i - x_i), subject to sum_i x_i <= budget; see :func:`nbs_coupled`.

Everything is vectorised over clients (any array shape broadcasts); the bargaining outcome is
found in closed form, so its cost does not grow with the number of offers (~500 with the
defaults). The server-side message exchange that realises the same outcome without the server
seeing any private number is in :mod:`rayfl.selection.selectors`; the client's side of it is
:func:`rayfl.selection.messages.client_reply`, built on the helpers here.

Example::

    >>> r = bargain(cap=[1.0], bid=[0.2], delta_s=0.95, beta_s=0.002,
    ...             delta_i=[0.95], beta_i=[0.002])
    >>> float(r.price[0]), int(r.steps[0])  # equal steps: the midpoint, at alpha = 1 / Delta
    (0.6, 500)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import numpy as np

from rayfl.validation import check_int, check_real, check_real_array

ACCEPT_TOL = 1e-9
"""Slack of the acceptance rule, in normalised utility units (a numerical tolerance, not a model
constant): an offer is accepted when U >= target - ACCEPT_TOL."""

_GALLOP_ITERATIONS = 62  # widening from the closed-form guess, up to 2**61 offers away


@dataclasses.dataclass(frozen=True)
class BargainParams:
    """The server's own bargaining parameters (spec section 5); delta_S is announced to clients."""

    beta_s: float = 0.002
    """beta_S: the server's concession rate; its target drops by beta_S per offer (> 0)."""
    delta_s: float = 0.95
    """delta_S: the server's discount factor per step, in [0, 1); announced to the clients."""
    max_steps: int = 10_000
    """Offers at steps 0..max_steps; a bargaining with no acceptance by then breaks down."""

    def __post_init__(self) -> None:
        check_server_params(self.beta_s, self.delta_s)
        check_int(
            "incentive.max_steps",
            self.max_steps,
            low=0,
            fix="allow enough offers to agree, about 1/beta_s (default 10000)",
        )


def check_server_params(beta_s: Any, delta_s: Any) -> tuple[float, float]:
    """Validates (beta_S, delta_S); raises ConfigError naming ``incentive.beta_s``/``delta_s``."""
    b = check_real(
        "incentive.beta_s",
        beta_s,
        low=0.0,
        low_open=True,
        fix="use a concession rate > 0, e.g. 0.002",
    )
    d = check_real(
        "incentive.delta_s",
        delta_s,
        low=0.0,
        high=1.0,
        high_open=True,
        fix="use a discount factor in [0, 1), e.g. 0.95",
    )
    return b, d


def params_from(obj: Any) -> BargainParams:
    """A :class:`BargainParams` from any object with ``beta_s``, ``delta_s`` (and ``max_steps``)."""
    if isinstance(obj, BargainParams):
        return obj
    return BargainParams(
        beta_s=obj.beta_s,
        delta_s=obj.delta_s,
        max_steps=getattr(obj, "max_steps", BargainParams.max_steps),
    )


# --- the two strategies (shared by the closed form and the message protocol) ------------------------


def concession_target(k: Any, step: Any) -> np.ndarray:
    """T(k) = max(0, 1 - k * step): a party's target utility at its k-th offer (normalised)."""
    return np.maximum(0.0, 1.0 - np.asarray(k, dtype=np.float64) * np.asarray(step))


def client_concession(beta_i: Any, delta_s: Any, delta_i: Any) -> np.ndarray:
    """Delta_i = beta_i * delta_S / delta_i: the client scales its step by the ratio of patience."""
    return np.asarray(beta_i, dtype=np.float64) * np.asarray(delta_s) / np.asarray(delta_i)


def server_offer_price(k: Any, cap: Any, bid: Any, step_s: Any) -> np.ndarray:
    """The server's k-th offer (step 2k): x = cap - T_S(k) * S, clipped to [bid, cap]."""
    cap = np.asarray(cap, dtype=np.float64)
    bid = np.asarray(bid, dtype=np.float64)
    return np.clip(cap - concession_target(k, step_s) * (cap - bid), bid, cap)


def client_offer_price(k: Any, cap: Any, bid: Any, step_i: Any) -> np.ndarray:
    """The client's k-th offer (step 2k + 1): x = bid + T_i(k) * S, clipped to [bid, cap]."""
    cap = np.asarray(cap, dtype=np.float64)
    bid = np.asarray(bid, dtype=np.float64)
    return np.clip(bid + concession_target(k, step_i) * (cap - bid), bid, cap)


def _normalised(num: np.ndarray, surplus: np.ndarray) -> np.ndarray:
    """num / S where S > 0; where S == 0 the only price is bid == cap and U is defined as 0."""
    out = np.zeros(np.broadcast(num, surplus).shape)
    np.divide(num, surplus, out=out, where=surplus > 0)
    return out


def client_accepts(price: Any, k: Any, cap: Any, bid: Any, step_i: Any) -> np.ndarray:
    """Does the client accept the server's k-th offer? iff U_i(price) >= T_i(k) (its next target).

    With zero surplus it accepts any price >= bid (the server's offer is then exactly bid).
    """
    cap = np.asarray(cap, dtype=np.float64)
    bid = np.asarray(bid, dtype=np.float64)
    price = np.asarray(price, dtype=np.float64)
    surplus = cap - bid
    u = _normalised(price - bid, surplus)
    return np.where(
        surplus > 0, u >= concession_target(k, step_i) - ACCEPT_TOL, price >= bid
    ).astype(bool)


def server_accepts(price: Any, k: Any, cap: Any, bid: Any, step_s: Any) -> np.ndarray:
    """Does the server accept the client's k-th offer? iff U_S(price) >= T_S(k + 1).

    With zero surplus it accepts any price <= cap.
    """
    cap = np.asarray(cap, dtype=np.float64)
    bid = np.asarray(bid, dtype=np.float64)
    price = np.asarray(price, dtype=np.float64)
    surplus = cap - bid
    u = _normalised(cap - price, surplus)
    k_next = np.asarray(k, dtype=np.int64) + 1
    return np.where(
        surplus > 0, u >= concession_target(k_next, step_s) - ACCEPT_TOL, price <= cap
    ).astype(bool)


# --- the bargaining outcome ------------------------------------------------------------------------


class BargainResult(NamedTuple):
    """The outcome of the decomposed bargainings, one entry per client (arrays of one shape).

    Utilities are *normalised* (by the surplus S_i, so 1 = the whole surplus) and *realised*
    (discounted by delta^A_i). In reward units: ``server_gain`` / ``client_gain``.
    """

    price: np.ndarray  # agreed x_i (reward units); NaN where the bargaining broke down
    steps: np.ndarray  # A_i, int64: the step of the accepted offer; max_steps + 1 on breakdown
    agreed: np.ndarray  # bool
    server_utility: np.ndarray  # delta_S^A * (cap - x) / S; 0 on breakdown or S == 0
    client_utility: np.ndarray  # delta_i^A * (x - bid) / S; 0 on breakdown or S == 0
    surplus: np.ndarray  # S_i = cap_i - bid_i (reward units)

    @property
    def server_gain(self) -> np.ndarray:
        """The server's realised discounted utility in reward units, delta_S^A * (cap - x)."""
        return self.server_utility * self.surplus

    @property
    def client_gain(self) -> np.ndarray:
        """The client's realised discounted utility in reward units, delta_i^A * (x - bid)."""
        return self.client_utility * self.surplus


def _first_accepted(accepts, k0: np.ndarray) -> np.ndarray:
    """The least k >= 0 with accepts(k) True, searched from a closed-form guess k0.

    ``accepts`` is monotone in k (targets only fall, offers only improve, and float rounding keeps
    both monotone), so the answer is the same wherever the search starts. Usually the guess is a
    step or two off; but when the surplus is a few ulps the offered prices round to bid or cap and
    the first acceptance can be a hundred offers away from the guess (issue: cap 1, surplus 1 ulp,
    Delta_S 0.005859375, Delta_i 0: the client accepts the server's 86th offer, the guess is 171).
    So the search gallops away from the guess (1, 2, 4, ... offers) until the answer is bracketed,
    then bisects: O(log distance) calls of ``accepts``, whatever the rounding did.
    """
    k0 = np.maximum(k0, 0)
    ok = accepts(k0)
    hi = np.where(ok, k0, -1)  # the least k known to be accepted; -1: none yet
    lo = np.where(ok, -1, k0)  # the largest k known to be refused; -1: none (k < 0)
    downward = ok & (k0 > 0)  # accepted at the guess: look below it for a refusal
    gap = 1
    for _ in range(_GALLOP_ITERATIONS):
        upward = hi < 0
        if not (upward.any() or downward.any()):
            break
        probe = np.where(upward, k0 + gap, np.where(downward, np.maximum(k0 - gap, 0), hi))
        yes = accepts(probe)
        moved = upward | downward
        hi = np.where(moved & yes, probe, hi)
        lo = np.where(moved & ~yes, probe, lo)
        downward = downward & yes & (probe > 0)
        gap *= 2
    else:  # pragma: no cover - T_S reaches 0 near k = 1 / Delta_S: cap is offered
        raise RuntimeError("bargaining: no accepted offer found from the closed-form guess")
    while True:  # --- bisect (lo, hi]: lo refused (or -1), hi accepted ---
        wide = hi - lo > 1
        if not wide.any():
            return hi
        mid = np.where(wide, (lo + hi) // 2, hi)
        yes = accepts(mid)
        hi = np.where(wide & yes, mid, hi)
        lo = np.where(wide & ~yes, mid, lo)


def bargain_steps(
    cap: Any,
    bid: Any,
    step_s: float,
    step_i: Any,
    delta_s: float,
    delta_i: Any,
    max_steps: int = BargainParams.max_steps,
) -> BargainResult:
    """The bargaining of section 5 given the concession steps themselves (Delta_S, Delta_i).

    :func:`bargain` computes Delta_i = beta_i * delta_S / delta_i and calls this; a reciprocal
    client (one that matches the server's observed concession) is ``step_i = step_s``.

    The first acceptable offer of each party is found in closed form: the client accepts the
    server's k-th offer once k (Delta_S + Delta_i) >= 1, the server the client's k-th once
    k Delta_i + (k + 1) Delta_S >= 1; each guess is only the start of a search (see
    :func:`_first_accepted`) that applies the very acceptance rules the message protocol uses
    (:func:`client_accepts`, :func:`server_accepts`), so float rounding of the guess, or of prices
    when the surplus is a few ulps, cannot move the result. A = min(2 k_server, 2 k_client + 1).

    Args:
        cap: R_{S,i}, any shape; broadcasts with the other per-client arrays.
        bid: R_{i,S} <= cap.
        step_s: Delta_S > 0.
        step_i: Delta_i >= 0 (0: a client that never concedes).
        delta_s: the server's discount factor in [0, 1).
        delta_i: the clients' discount factors in [0, 1).
        max_steps: offers are made at steps 0..max_steps; none accepted by then is a breakdown.

    Raises:
        ValueError: cap < bid somewhere (not a candidate: section 4 never bargains with it), or a
            non-finite cap or bid.
        ConfigError: a step or discount factor out of range.
    """
    cap, bid, step_s, step_i, delta_s, delta_i, max_steps = _checked_bargain(
        cap, bid, step_s, step_i, delta_s, delta_i, max_steps
    )
    surplus = cap - bid
    positive = surplus > 0
    steps, price = _first_acceptance(cap, bid, step_s, step_i)

    # --- zero surplus: the server's first offer (x = bid = cap) is accepted at once ---
    steps = np.where(positive, steps, 0)
    price = np.where(positive, price, bid)

    # --- breakdown and realised (discounted) normalised utilities ---
    agreed = steps <= max_steps
    steps = np.where(agreed, steps, max_steps + 1).astype(np.int64)
    price = np.where(agreed, price, np.nan)
    x = np.where(agreed, price, bid)  # any finite placeholder; masked below
    u_server = np.where(agreed, np.power(delta_s, steps) * _normalised(cap - x, surplus), 0.0)
    u_client = np.where(agreed, np.power(delta_i, steps) * _normalised(x - bid, surplus), 0.0)
    return BargainResult(price, steps, agreed, u_server, u_client, surplus)


def _checked_bargain(
    cap: Any,
    bid: Any,
    step_s: Any,
    step_i: Any,
    delta_s: Any,
    delta_i: Any,
    max_steps: Any,
) -> tuple[np.ndarray, np.ndarray, float, np.ndarray, float, np.ndarray, int]:
    """The arguments of :func:`bargain_steps`, checked; cap, bid, step_i and delta_i broadcast
    to one shape (float64)."""
    step_s = check_real(
        "incentive.beta_s", step_s, low=0.0, low_open=True, fix="use a concession step > 0"
    )
    delta_s = check_server_params(step_s, delta_s)[1]
    max_steps = check_int("incentive.max_steps", max_steps, low=0, fix="use e.g. 10000")
    step_i = check_real_array(
        "incentive.beta_i", step_i, low=0.0, fix="use client concession steps >= 0"
    )
    delta_i = check_real_array(
        "incentive.delta_i",
        delta_i,
        low=0.0,
        high=1.0,
        high_open=True,
        fix="use client discount factors in [0, 1) (incentive.delta_i_low/high)",
    )
    cap, bid, step_i, delta_i = np.broadcast_arrays(
        np.asarray(cap, dtype=np.float64), np.asarray(bid, dtype=np.float64), step_i, delta_i
    )
    if not (np.isfinite(cap).all() and np.isfinite(bid).all()):
        raise ValueError("bargain: cap and bid must be finite")
    if (cap < bid).any():
        j = tuple(int(v) for v in np.argwhere(cap < bid)[0])
        raise ValueError(
            f"bargain: cap={cap[j]!r} < bid={bid[j]!r} at index {j}: not a candidate "
            "(section 4 selects only clients with bid <= cap)"
        )
    return cap, bid, step_s, step_i, delta_s, delta_i, max_steps


def _first_acceptance(
    cap: np.ndarray, bid: np.ndarray, step_s: float, step_i: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(A, x): the step and price of the first accepted offer, ignoring max_steps.

    Closed-form first acceptances, then checked with the protocol's own rules.
    """
    total = step_s + step_i  # > 0
    guess_server = np.ceil(1.0 / total)  # server's k-th offer accepted by the client
    guess_client = np.ceil(np.maximum(0.0, 1.0 - step_s) / total)  # client's k-th, by the server
    k_server = _first_accepted(
        lambda k: client_accepts(server_offer_price(k, cap, bid, step_s), k, cap, bid, step_i),
        guess_server.astype(np.int64),
    )
    k_client = _first_accepted(
        lambda k: server_accepts(client_offer_price(k, cap, bid, step_i), k, cap, bid, step_s),
        guess_client.astype(np.int64),
    )
    steps = np.minimum(2 * k_server, 2 * k_client + 1)
    by_server = steps % 2 == 0
    price = np.where(
        by_server,
        server_offer_price(k_server, cap, bid, step_s),
        client_offer_price(k_client, cap, bid, step_i),
    )
    return steps, price


def bargain(
    cap: Any,
    bid: Any,
    delta_s: float,
    beta_s: float,
    delta_i: Any,
    beta_i: Any,
    max_steps: int = BargainParams.max_steps,
) -> BargainResult:
    """Decomposed alternating-offers bargaining (spec section 5), vectorised over clients.

    Delta_S = beta_S and Delta_i = beta_i * delta_S / delta_i. This is the full-information
    simulation (both parties' parameters in one place): Experiment B and the tests use it. The
    selector never calls it; it exchanges :class:`~rayfl.selection.messages.Offer` and
    :class:`~rayfl.selection.messages.Response` messages instead, with the same outcome.

    Args:
        cap: R_{S,i}, the announced caps, any shape.
        bid: R_{i,S} <= cap. cap == bid (zero surplus) agrees at once at x = bid, 0 steps.
        delta_s: delta_S in [0, 1).
        beta_s: beta_S > 0.
        delta_i: client discount factors, in (0, 1) (delta_i is a divisor in Delta_i).
        beta_i: client concession rates > 0.
        max_steps: offers at steps 0..max_steps (default 10000; the defaults need ~500).

    Returns:
        :class:`BargainResult`: prices, steps A_i, agreed mask, realised normalised utilities.

    Raises:
        ValueError: cap < bid (not a candidate).
        ConfigError: beta_s or beta_i <= 0, delta_s outside [0, 1), delta_i outside (0, 1);
            the message names ``incentive.beta_s``, ``incentive.delta_s``, ``incentive.beta_i``
            or ``incentive.delta_i``.

    >>> r = bargain([1.0, 2.0], [0.0, 2.0], 0.95, 0.25, [0.95, 0.95], [0.25, 0.25])
    >>> r.price.tolist(), r.steps.tolist()  # midpoint after 4 steps; zero surplus: 0 steps
    ([0.5, 2.0], [4, 0])
    """
    beta_s, delta_s = check_server_params(beta_s, delta_s)
    beta_i = check_real_array(
        "incentive.beta_i",
        beta_i,
        low=0.0,
        low_open=True,
        fix="use client concession rates > 0 (incentive.beta_i_low/high)",
    )
    delta_i = check_real_array(
        "incentive.delta_i",
        delta_i,
        low=0.0,
        high=1.0,
        low_open=True,
        high_open=True,
        fix="use client discount factors in (0, 1) (incentive.delta_i_low/high)",
    )
    step_i = client_concession(beta_i, delta_s, delta_i)
    return bargain_steps(cap, bid, beta_s, step_i, delta_s, delta_i, max_steps)


# --- Nash bargaining solutions (section 7) ---------------------------------------------------------


def _prices(x: Any, cap: Any, bid: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x, cap, bid = np.broadcast_arrays(
        np.asarray(x, dtype=np.float64),
        np.asarray(cap, dtype=np.float64),
        np.asarray(bid, dtype=np.float64),
    )
    if (cap < bid).any():
        raise ValueError("cap < bid: not a candidate")
    if ((x < bid) | (x > cap)).any() or not np.isfinite(x).all():
        raise ValueError("every price must lie in [bid, cap]")
    return x, cap, bid


def nbs_separable(cap: Any, bid: Any) -> np.ndarray:
    """The exact maximiser of the separable Nash product: x_i* = (bid_i + cap_i) / 2.

    Each factor (x - bid)(cap - x) is a downward parabola with its top at the midpoint.

    >>> nbs_separable([1.0, 3.0], [0.0, 2.0]).tolist()
    [0.5, 2.5]
    """
    cap = np.asarray(cap, dtype=np.float64)
    bid = np.asarray(bid, dtype=np.float64)
    if (cap < bid).any():
        raise ValueError("cap < bid: not a candidate")
    return bid + 0.5 * (cap - bid)


def nash_product_separable(x: Any, cap: Any, bid: Any) -> float:
    """NP(x) = prod_i (x_i - bid_i) (cap_i - x_i) over all entries (disagreement point 0).

    The client's factor is its utility over its bid: u_i(x) - d_i = x + e_i - phi_i = x - bid_i
    whenever bid_i > 0 (a clipped bid of 0 hides e_i - phi_i > 0, which the server cannot know).
    Products of many small factors underflow: prefer :func:`log_nash_product`.
    """
    x, cap, bid = _prices(x, cap, bid)
    return float(np.prod((x - bid) * (cap - x)))


def log_nash_product(x: Any, cap: Any, bid: Any) -> float:
    """log NP(x) of the separable form: sum_i log(x_i - bid_i) + log(cap_i - x_i).

    -inf when some factor is 0 (a price at bid or cap, or a zero surplus).
    """
    x, cap, bid = _prices(x, cap, bid)
    with np.errstate(divide="ignore"):
        return float(np.sum(np.log(x - bid)) + np.sum(np.log(cap - x)))


def nash_product_coupled(x: Any, cap: Any, bid: Any) -> float:
    """NP_c(x) = prod_i (x_i - bid_i) * sum_i (cap_i - x_i): the server as one more player."""
    x, cap, bid = _prices(x, cap, bid)
    return float(np.prod(x - bid) * np.sum(cap - x))


def log_nash_product_coupled(x: Any, cap: Any, bid: Any) -> float:
    """log NP_c(x) = sum_i log(x_i - bid_i) + log sum_i (cap_i - x_i)."""
    x, cap, bid = _prices(x, cap, bid)
    with np.errstate(divide="ignore"):
        return float(np.sum(np.log(x - bid)) + np.log(np.sum(cap - x)))


def _water_level(surplus: np.ndarray, total: float, extra: float) -> float:
    """The L >= 0 with extra * L + sum_i min(S_i, L) = total (the left side increases in L).

    Exact: on [s_(j), s_(j+1)] of the sorted S the left side is (extra + n - j) L + sum_{l<=j}
    s_(l), a line; find the segment, solve the line. Requires total < extra * s_max + sum S when
    extra == 0 (the level is then below the largest surplus).
    """
    s = np.sort(surplus)
    n = s.size
    prefix = np.concatenate([[0.0], np.cumsum(s)])  # prefix[j] = s_(1) + ... + s_(j)
    j = np.arange(1, n + 1)
    at_breaks = extra * s + prefix[1:] + (n - j) * s  # left side at L = s_(j)
    capped = int(np.searchsorted(at_breaks, total, side="right"))  # how many S_i are below L
    if extra + n - capped <= 0:  # extra == 0 and total >= sum S: every client is at its cap
        return float(s[-1])
    return float((total - prefix[capped]) / (extra + n - capped))


def nbs_coupled(cap: Any, bid: Any, budget: float) -> np.ndarray:
    """The exact NBS of the coupled form: argmax NP_c(x) s.t. bid <= x <= cap, sum x <= budget.

    Derivation. Write y_i = x_i - bid_i in [0, S_i] and L = sum_i (S_i - y_i), the server's
    utility (total leftover). Maximise the concave f(y) = sum_i log y_i + log L subject to
    y_i <= S_i (multipliers nu_i >= 0) and sum_i y_i <= Y = budget - sum_i bid_i (lambda >= 0).
    KKT stationarity: 1/y_i - 1/L = lambda + nu_i. Where y_i < S_i, nu_i = 0, so every uncapped
    client sits at one common level t = 1 / (1/L + lambda); a capped one has 1/S_i >= 1/t, i.e.
    S_i <= t. Hence y_i = min(S_i, t): water-filling.

    - Budget slack (lambda = 0): t = L, and L solves L + sum_i min(S_i, L) = sum_i S_i, a
      piecewise-linear increasing equation solved exactly by sorting (no iteration). With no cap
      binding, y_i = sum_j S_j / (|C| + 1): the surplus is split equally among the |C| + 1
      players.
    - If that allocation overspends the budget, lambda > 0 and sum_i y_i = Y: t solves
      sum_i min(S_i, t) = Y, again exactly by sorting; then L = sum S - Y >= t, so lambda =
      1/t - 1/L >= 0 and KKT holds.

    f is strictly concave in (y, L) jointly, so the KKT point is the unique maximiser. Clients with
    zero surplus have the single price bid (they would zero the product whatever the others get)
    and are left out of the optimisation. If the budget leaves nothing to share (Y == 0 with
    positive surplus) every allocation has NP_c = 0 and x = bid is returned.

    Args:
        cap: R_{S,i}, shape (n,).
        bid: R_{i,S} <= cap, shape (n,).
        budget: R(t) >= sum_i bid_i.

    Returns:
        x, shape (n,), with bid <= x <= cap and sum x <= budget (up to rounding).

    Raises:
        ValueError: cap < bid, or budget < sum(bid) (no feasible allocation).

    >>> nbs_coupled([1.0, 1.0], [0.0, 0.0], budget=10.0).tolist()  # each gets 2/3 of the surplus
    [0.6666666666666666, 0.6666666666666666]
    """
    cap = np.asarray(cap, dtype=np.float64).reshape(-1)
    bid = np.asarray(bid, dtype=np.float64).reshape(-1)
    if cap.shape != bid.shape:
        raise ValueError(f"cap {cap.shape} and bid {bid.shape} must have one shape")
    if (cap < bid).any():
        raise ValueError("cap < bid: not a candidate")
    if not math.isfinite(budget) or budget < bid.sum():
        raise ValueError(f"budget={budget!r} < sum(bid)={bid.sum()!r}: no feasible allocation")
    surplus = cap - bid
    x = bid.copy()
    pos = surplus > 0
    if not pos.any():
        return x
    s = surplus[pos]
    level = _water_level(s, float(s.sum()), extra=1.0)
    y = np.minimum(s, level)
    room = budget - bid.sum()  # Y
    if bid.sum() + y.sum() > budget:  # the budget binds: lambda > 0
        y = np.minimum(s, _water_level(s, room, extra=0.0)) if room > 0 else np.zeros_like(s)
    x[pos] = bid[pos] + y
    return np.minimum(x, cap)


# --- the yardstick ---------------------------------------------------------------------------------


def ape(np_bargain: Any, np_nbs: Any) -> np.ndarray | float:
    """Absolute percentage error |NP(x_bargain) - NP(x*)| / NP(x*) * 100 (spec section 7).

    >>> ape(0.99, 1.0)
    1.0000000000000009
    """
    b = np.asarray(np_bargain, dtype=np.float64)
    n = np.asarray(np_nbs, dtype=np.float64)
    if (n <= 0).any():
        raise ValueError("the NBS Nash product must be > 0")
    out = np.abs(b - n) / n * 100.0
    return float(out) if out.ndim == 0 else out


def ape_from_log(log_np_bargain: Any, log_np_nbs: Any) -> np.ndarray | float:
    """The APE from log Nash products: 100 * |exp(log_b - log_nbs) - 1|, computed with expm1.

    Exact where the products themselves underflow; the APEs here are ~1e-4 %, far below where
    the ratio of two tiny products would lose digits.
    """
    out = 100.0 * np.abs(
        np.expm1(np.asarray(log_np_bargain, np.float64) - np.asarray(log_np_nbs, np.float64))
    )
    return float(out) if out.ndim == 0 else out
