"""Client selection for synchronous FedAvg rounds: random, pow-d and the incentive mechanism.

Pure selection logic (no training, no Ray) for the incentive spec of record
(``specs/incentive.md``):

- :func:`select_random`: M clients uniformly (section 9);
- :func:`select_pow_d`: power-of-choice (Cho, Wang and Joshi, AISTATS 2022; section 9);
- :func:`select_incentive`: the J-KICS incentive round, sections 2, 4, 5 and 6: cap
  announcement, minimum-reward bids, cheapest-first selection, decomposed alternating-offers
  bargaining, additional selection with the pooled leftover, and the budget carried over.

M(t) = max(1, floor(K * n(t))) with K a fraction (section 1): :func:`num_selected`.

The client side runs behind callbacks, so the Ray layer can compute it inside the client workers:
``bids_fn(client_ids, cap) -> [Bid]`` and ``replies_fn(offers, cap) -> [Offer | Response]`` for the
incentive round, ``losses_fn(candidate_ids) -> [LossReport]`` for pow-d. One ``replies_fn`` call
carries a window of each bargaining client's next offers, so a bargaining of A steps costs about
log2(A) + 2 calls, not A / 2 (:func:`_window_end`). The server-side code here sees only those
message types (anything else is a TypeError): never a loss (except pow-d's reports, by its
design), a data size, a cost or a bargaining parameter of a client.

Randomness (candidate draws, tie-breaks) comes only from the ``rng`` argument; the loop derives it
as ``seeding.rng(seed, seeding.SELECTION, round)``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from rayfl.selection.bargaining import (
    BargainParams,
    ape_from_log,
    params_from,
    server_accepts,
    server_offer_price,
)
from rayfl.selection.messages import (
    Bid,
    BidsFn,
    LossReport,
    Offer,
    RepliesFn,
    Reply,
    Response,
)
from rayfl.validation import check_int, check_real

_FLOOR_SLACK = 1e-9  # floor(K * n) with K * n = 28.999999999999996 for K = 0.29, n = 100 is 29

LossesFn = Callable[[Sequence[int]], Sequence[LossReport]]
"""pow-d: (candidate ids) -> their LossReports (computed by the clients on w(t))."""


# --- helpers ---------------------------------------------------------------------------------------


def num_selected(k_fraction: float, n: int) -> int:
    """M(t) = max(1, floor(K * n(t))) (section 1), K a fraction in (0, 1].

    >>> num_selected(0.1, 100), num_selected(0.1, 5), num_selected(0.29, 100)
    (10, 1, 29)
    """
    k = check_real(
        "selection.k_fraction",
        k_fraction,
        low=0.0,
        high=1.0,
        low_open=True,
        fix="use a fraction of the available clients in (0, 1], e.g. 0.1",
    )
    return max(1, math.floor(k * int(n) + _FLOOR_SLACK))


def _client_ids(available: Sequence[int] | np.ndarray) -> np.ndarray:
    ids = np.asarray(available, dtype=np.int64).reshape(-1)
    if (ids < 0).any():
        raise ValueError("client ids must be >= 0")
    if np.unique(ids).size != ids.size:
        raise ValueError("available client ids must be distinct")
    return ids


def _random_order(keys: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices sorting ``keys`` ascending, ties broken uniformly at random."""
    perm = rng.permutation(keys.size)
    return perm[np.argsort(keys[perm], kind="stable")]


# --- random and pow-d ------------------------------------------------------------------------------


def select_random(
    available: Sequence[int] | np.ndarray, m: int, rng: np.random.Generator
) -> np.ndarray:
    """M clients drawn uniformly without replacement (section 9), in draw order.

    m larger than the number of available clients is clamped to it.

    >>> select_random([3, 5, 7], 5, np.random.default_rng(0)).size
    3
    """
    ids = _client_ids(available)
    if int(m) < 1:
        raise ValueError(f"m={m} must be >= 1")
    return rng.choice(ids, size=min(int(m), ids.size), replace=False)


@dataclasses.dataclass(frozen=True)
class PowDRound:
    """One pow-d selection: the d candidates, their reported losses, and the M selected."""

    selected: np.ndarray  # (M,) int64, highest loss first
    candidates: np.ndarray  # (d,) int64, in draw order
    losses: np.ndarray  # (d,) float64, aligned with candidates


def select_pow_d(
    sizes: Sequence[int] | np.ndarray,
    losses_fn: LossesFn,
    d: int,
    m: int,
    rng: np.random.Generator,
    *,
    available: Sequence[int] | np.ndarray | None = None,
) -> PowDRound:
    """pow-d (Cho, Wang, Joshi 2022; spec section 9): d candidates by size, then the M lossiest.

    Draws d candidates without replacement with probability proportional to |D_i| (successive
    draws, renormalised over the clients not yet drawn), asks them for F_i(w(t)) through
    ``losses_fn``, and keeps the m with the highest loss (ties broken uniformly at random).

    d larger than the number of available clients with |D_i| > 0 is clamped to that number (pow-d
    then ranks every such client), and so is m. pow-d reveals each candidate's loss to the server
    by design (:class:`~rayfl.selection.messages.LossReport`).

    Args:
        sizes: (N,) |D_i| of every client, indexed by client id.
        losses_fn: (candidate ids) -> one LossReport per candidate.
        d: candidates per round (paper: 16), >= 1.
        m: clients to select, 1 <= m <= d.
        rng: the round's generator.
        available: the available client ids (default: all N).

    Raises:
        ConfigError: d < 1 or d < m (``selection.d``).
        TypeError: ``losses_fn`` returned something other than LossReports.
    """
    d = check_int("selection.d", d, low=1, fix="use at least M candidates, e.g. 16")
    if int(m) < 1:
        raise ValueError(f"m={m} must be >= 1")
    if d < int(m):
        check_int(
            "selection.d", d, low=int(m), fix=f"pow-d picks M={m} among d candidates: use d >= M"
        )
    sizes = np.asarray(sizes, dtype=np.float64).reshape(-1)
    if (sizes < 0).any() or not np.isfinite(sizes).all():
        raise ValueError("data sizes must be finite and >= 0")
    ids = np.arange(sizes.size) if available is None else _client_ids(available)
    if ids.size and ids.max() >= sizes.size:
        raise ValueError(f"client id {ids.max()} has no data size (N={sizes.size})")
    ids = ids[sizes[ids] > 0]  # a client with no data cannot be drawn
    if ids.size == 0:
        raise ValueError("pow-d: no available client holds data")
    d_eff = min(d, ids.size)
    p = sizes[ids] / sizes[ids].sum()
    candidates = rng.choice(ids, size=d_eff, replace=False, p=p)

    losses = _reported_losses(losses_fn([int(i) for i in candidates]), candidates)
    order = _random_order(-losses, rng)
    return PowDRound(candidates[order[: min(int(m), d_eff)]], candidates, losses)


def _reported_losses(reports: Sequence[Any], candidates: np.ndarray) -> np.ndarray:
    """(d,) float64 losses aligned with ``candidates``: one finite LossReport from each."""
    by_id: dict[int, float] = {}
    for r in reports:
        if not isinstance(r, LossReport):
            raise TypeError(f"pow-d expects LossReport messages, got {type(r).__name__}")
        if r.client_id in by_id or r.client_id not in set(candidates.tolist()):
            raise ValueError(f"unexpected or repeated LossReport from client {r.client_id}")
        if not math.isfinite(r.loss):
            raise ValueError(f"client {r.client_id} reported loss={r.loss!r}")
        by_id[int(r.client_id)] = float(r.loss)
    if len(by_id) != candidates.size:
        raise ValueError(f"pow-d: {candidates.size} candidates but {len(by_id)} loss reports")
    return np.array([by_id[int(i)] for i in candidates])


# --- the incentive round ---------------------------------------------------------------------------


class MechanismParts(NamedTuple):
    """Which parts of the incentive round run; all on is the spec's mechanism.

    The switches exist for the ablation (issue 15): they take parts away from the full mechanism
    (``incentive.bargaining``, ``incentive.additional_selection``, ``incentive.carry_over``;
    :meth:`~rayfl.config.IncentiveConfig.mechanism`).
    """

    bargaining: bool = True
    """Section 5; off: a selected bidder is paid its bid R_{i,S}, no offers exchanged."""
    additional_selection: bool = True
    """Section 6; off: only the first pass selects, open slots stay open."""
    carry_over: bool = True
    """r(t) = what is unspent; off: r(t) = 0, the unspent budget is dropped."""


FULL_MECHANISM = MechanismParts()
"""Every part on: the spec's incentive round (and the default)."""


@dataclasses.dataclass(frozen=True)
class IncentiveRound:
    """The server's record of one incentive round: only what the server itself knows.

    Per selected client (arrays aligned, in selection order): its bid, the cap it bargained under,
    the payment, the steps and the *server's* realised normalised utility (a client's own
    utility depends on private numbers the server never sees).
    """

    budget: float  # R(t) = R_S + r(t-1), reward units
    m: int  # M(t)
    selected: np.ndarray  # (|C|,) int64 client ids
    bids: np.ndarray  # (|C|,) R_{i,S}
    caps: np.ndarray  # (|C|,) R_{S,i} of the pass that selected the client
    payments: np.ndarray  # (|C|,) agreed x_i
    steps: np.ndarray  # (|C|,) int64, A_i
    server_utility: np.ndarray  # (|C|,) delta_S^A (cap - x) / (cap - bid); 0 at zero surplus
    carried: float  # r(t): unspent, carried to the next round
    announced_caps: tuple[float, ...]  # the cap of each pass: R / M, then R' = L / (M - |C|)
    num_bids: tuple[int, ...]  # bids received per pass
    num_candidates: tuple[int, ...]  # |C'| per pass
    disagreed: np.ndarray  # ids whose bargaining broke down (or who broke it off)
    log_nash_product: float  # log NP (separable) of the bargain over clients with surplus > 0
    log_nash_product_nbs: float  # log NP of the exact separable NBS, same clients
    ape: float  # percent; NaN when no selected client had a positive surplus

    @property
    def leftover(self) -> np.ndarray:
        """r_i = R_{S,i} - x_i, (|C|,)."""
        return self.caps - self.payments

    @property
    def skipped(self) -> bool:
        """True when nobody was selected: no training this round, R(t) carried over whole."""
        return self.selected.size == 0

    def metrics(self) -> dict[str, float]:
        """Scalars to log per round, prefixed ``incentive/``."""
        return {
            "incentive/budget": self.budget,
            "incentive/m": float(self.m),
            "incentive/selected": float(self.selected.size),
            "incentive/payments": float(math.fsum(self.payments)),
            "incentive/leftover": float(math.fsum(self.leftover)),
            "incentive/carried": self.carried,
            "incentive/passes": float(len(self.announced_caps)),
            "incentive/steps_mean": float(self.steps.mean()) if self.steps.size else math.nan,
            "incentive/server_utility": float(math.fsum(self.server_utility)),
            "incentive/log_nash_product": self.log_nash_product,
            "incentive/log_nash_product_nbs": self.log_nash_product_nbs,
            "incentive/ape": self.ape,
            "incentive/skipped": float(self.skipped),
        }


def _received_bids(bids: Sequence[Any], asked: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(client ids, amounts) of the bids; only Bid messages from asked clients, at most one each."""
    asked_set = set(asked.tolist())
    ids: list[int] = []
    amounts: list[float] = []
    for b in bids:
        if not isinstance(b, Bid):
            raise TypeError(
                f"the server accepts only Bid messages during selection, got {type(b).__name__}"
            )
        if b.client_id not in asked_set or b.client_id in ids:
            raise ValueError(f"unexpected or repeated bid from client {b.client_id}")
        if not (math.isfinite(b.amount) and b.amount >= 0):
            raise ValueError(f"client {b.client_id} bid amount={b.amount!r}: must be >= 0")
        ids.append(int(b.client_id))
        amounts.append(float(b.amount))
    return np.array(ids, dtype=np.int64), np.array(amounts, dtype=np.float64)


def _received_replies(
    replies: Sequence[Any], offers: Sequence[Offer]
) -> dict[tuple[int, int], Reply]:
    """The replies keyed by (client id, step of the offer they answer).

    Only Offer or Response messages, at most one per offer: a Response answers the offer at its
    own step, a counter Offer (at an odd step) the offer one step before. A client may leave its
    later offers unanswered once it has sent a Response.
    """
    offered = {(o.client_id, o.step) for o in offers}
    out: dict[tuple[int, int], Reply] = {}
    for r in replies:
        if not isinstance(r, (Offer, Response)):
            raise TypeError(
                f"the server accepts only Offer or Response messages while bargaining, got "
                f"{type(r).__name__}"
            )
        key = (r.client_id, r.step if isinstance(r, Response) else r.step - 1)
        if key not in offered:
            raise ValueError(f"client {r.client_id} replied at step {r.step} to no offer of ours")
        if key in out:
            raise ValueError(f"client {r.client_id} replied twice to the offer at step {key[1]}")
        if isinstance(r, Offer) and not math.isfinite(r.price):
            raise ValueError(f"client {r.client_id} counter-offered price={r.price!r}")
        out[key] = r
    return out


def _window_end(k: int, last_k: int, max_window: int | None) -> int:
    """End (exclusive) of the server's offers sent together from its k-th: k, ..., 2k - 1.

    One offer per message for k = 0 and 1, then windows that double (2, 4, 8, ...): a bargaining
    of A steps takes about log2(A) + 2 messages each way instead of A / 2, and the offers sent
    ahead never outnumber those already made. Speculation starts only after the server has seen
    the client's counter-offers 0 and 1 and the client the server's offers 0 and 1: with the
    linear schedules of section 5 those two fix every later offer of either side (given the
    bid and cap both know), so answering ahead reveals nothing a live exchange would not.
    """
    size = max(1, k) if max_window is None else max(1, min(k, max_window))
    return min(k + size, last_k + 1)


class _Bargains(NamedTuple):
    """The outcome of the server's bargainings, (n,) each, filled in as the answers arrive."""

    price: np.ndarray  # agreed x_i; NaN until agreed (and after a breakdown)
    steps: np.ndarray  # int64 A_i; max_steps + 1 until decided
    agreed: np.ndarray  # bool


Pricing = Callable[[np.ndarray, np.ndarray, float], _Bargains]
"""(chosen ids, their bids, the pass's cap) -> the outcome of pricing them (:func:`_pricing`)."""


def _bargain_with(
    ids: np.ndarray,
    bids: np.ndarray,
    cap: float,
    params: BargainParams,
    replies_fn: RepliesFn,
    max_window: int | None = None,
) -> _Bargains:
    """The server's side of section 5 with each of ``ids``, run as a message exchange.

    Each inner loop turn is one step pair: the server's k-th offer (step 2k); the client accepts,
    counters (step 2k + 1; the server accepts it iff U_S >= T_S(k + 1)), or breaks off. The
    server sends its offers k, ..., 2k - 1 to every client still bargaining in one
    ``replies_fn`` call (:func:`_window_end`; offer k' is made in case offer k' - 1 and the
    counter to it are both refused), then replays the answers one step pair at a time and stops
    at each client's agreement: prices and steps are those of the live exchange, which is also
    :func:`~rayfl.selection.bargaining.bargain` with the clients' private parameters, without
    the server knowing them. Answers past the agreement are ignored.

    Returns:
        (price, steps, agreed), each (len(ids),); price is NaN and steps max_steps + 1 where the
        bargaining broke down for lack of agreement by ``params.max_steps``.
    """
    n = ids.size
    out = _Bargains(
        np.full(n, np.nan), np.full(n, params.max_steps + 1, dtype=np.int64), np.zeros(n, bool)
    )
    active = np.arange(n)
    last_k = params.max_steps // 2  # the server's last offer is at step 2 * last_k
    k = 0
    while active.size and k <= last_k:
        # --- the server's offers k, ..., end - 1 (steps 2k, 2k + 2, ...), sent together ---
        window = range(k, _window_end(k, last_k, max_window))
        offered, offers = _window_offers(window, ids, bids, active, cap, params.beta_s)
        row = {int(j): r for r, j in enumerate(active)}
        got = _received_replies(replies_fn(offers, cap), offers)

        # --- replay them one step pair at a time: accept, break off, or counter ---
        for kk in window:
            countered, asks = _answers_to(kk, got, ids, active, offered[:, kk - k], row, out)
            if not countered or 2 * kk + 1 > params.max_steps:
                return out
            # --- the server answers the counter-offers (step 2kk + 1) ---
            cj = np.array(countered)
            ask = np.array(asks)
            ok = server_accepts(ask, kk, cap, bids[cj], params.beta_s)
            out.agreed[cj[ok]] = True
            out.price[cj[ok]] = ask[ok]
            out.steps[cj[ok]] = 2 * kk + 1
            active = cj[~ok]
            if not active.size:
                break
        k = window.stop
    return out


def _window_offers(
    window: range,
    ids: np.ndarray,
    bids: np.ndarray,
    active: np.ndarray,
    cap: float,
    beta_s: float,
) -> tuple[np.ndarray, list[Offer]]:
    """The server's offers of ``window`` to each active client: prices (len(active),
    len(window)) and the Offer messages, client by client."""
    offered = np.stack(
        [server_offer_price(kk, cap, bids[active], beta_s) for kk in window], axis=1
    )  # (len(active), len(window))
    offers = [
        Offer(int(ids[j]), 2 * kk, float(x))
        for j, xs in zip(active, offered, strict=True)
        for kk, x in zip(window, xs, strict=True)
    ]
    return offered, offers


def _answers_to(
    kk: int,
    got: dict[tuple[int, int], Reply],
    ids: np.ndarray,
    active: np.ndarray,
    offered_kk: np.ndarray,
    row: dict[int, int],
    out: _Bargains,
) -> tuple[list[int], list[float]]:
    """The active clients' answers to the server's offer kk (prices ``offered_kk``, by ``row``).

    A Response ends a client's bargaining and is written into ``out``; returns the clients that
    countered instead, with their asks.
    """
    countered: list[int] = []
    asks: list[float] = []
    for j in active:
        reply = got.get((int(ids[j]), 2 * kk))
        if reply is None:
            raise ValueError(f"client {ids[j]} did not reply to the offer at step {2 * kk}")
        if isinstance(reply, Response):
            out.steps[j] = 2 * kk
            out.agreed[j] = reply.accept
            out.price[j] = float(offered_kk[row[int(j)]]) if reply.accept else np.nan
        else:
            countered.append(int(j))
            asks.append(reply.price)
    return countered, asks


def select_incentive(
    available: Sequence[int] | np.ndarray,
    budget_carry: float,
    per_round_budget: float,
    k_fraction: float,
    bids_fn: BidsFn,
    replies_fn: RepliesFn,
    bargain_params: BargainParams | Any,
    rng: np.random.Generator,
    *,
    max_window: int | None = None,
    parts: MechanismParts = FULL_MECHANISM,
) -> IncentiveRound:
    """One round of the incentive mechanism (spec sections 2, 4, 5 and 6), server side.

    1. Budget R(t) = R_S + r(t-1); M(t) = max(1, floor(K n(t))); cap R_{S,i} = R(t) / M(t),
       announced to every available client, which answers with a :class:`Bid` (``bids_fn``).
    2. Candidates C' = {i : bid_i <= cap}; if |C'| > M, the M cheapest (ties at random).
    3. One alternating-offers bargaining per selected client (:class:`Offer`/:class:`Response`
       through ``replies_fn``); the agreed x_i is paid, r_i = cap - x_i.
    4. Additional selection: while slots remain, pool L = sum r_i + (M - |C|) R / M (= R(t) minus
       the payments so far), announce R' = L / (M - |C|) to the clients not yet selected and
       repeat 2-3; stop when no new client qualifies, nobody is left, or after M repetitions.
    5. r(t) = L, carried to the next round.

    A client whose bargaining broke down (no agreement within ``max_steps``, or it broke off) is
    not asked again this round. An empty candidate set in the first pass skips the round
    (nobody selected) and carries the whole R(t) over.

    Args:
        available: the n(t) available client ids.
        budget_carry: r(t-1) >= 0, the previous round's ``carried``.
        per_round_budget: R_S > 0 (``incentive.budget``, default 10.0).
        k_fraction: K in (0, 1] (``selection.k_fraction``, default 0.1).
        bids_fn: (client ids, cap) -> Bids, computed by the clients (e.g.
            :meth:`~rayfl.selection.messages.LocalClients.bids`).
        replies_fn: (offers, cap) -> the clients' Offer or Response to each offer
            (:data:`~rayfl.selection.messages.RepliesFn`); one call carries a window of each
            bargaining client's next offers (:func:`_window_end`).
        bargain_params: beta_S, delta_S, max_steps (:class:`BargainParams` or alike).
        rng: the round's generator, for the tie-breaks.
        max_window: at most this many offers per client in one ``replies_fn`` call (default:
            no limit; 1 is the strict one-step-at-a-time exchange). The outcome is the same.
        parts: the steps that run (default: all). The ablation switches off 3 (each chosen
            bidder is paid its bid, 0 steps), 4 (the first pass only) or 5 (r(t) = 0).

    Raises:
        ConfigError: per_round_budget <= 0 (``incentive.budget``) or K outside (0, 1].
        TypeError: a callback returned anything but Bid / Offer / Response messages.
    """
    budget = _round_budget(per_round_budget, budget_carry)  # R(t)
    params = params_from(bargain_params)
    ids = _client_ids(available)
    m = num_selected(k_fraction, ids.size)
    passes, unspent = _selection_passes(
        ids, budget, m, bids_fn, _pricing(parts, params, replies_fn, max_window), rng, parts
    )
    carried = unspent if parts.carry_over else 0.0  # off: the unspent budget is dropped
    return _round_record(passes, budget, m, carried, params.delta_s)


def _pricing(
    parts: MechanismParts,
    params: BargainParams,
    replies_fn: RepliesFn,
    max_window: int | None,
) -> Pricing:
    """How a pass prices its chosen bidders: section 5's bargaining, or (ablation) their bids."""
    if parts.bargaining:
        return lambda ids, bids, cap: _bargain_with(ids, bids, cap, params, replies_fn, max_window)
    return lambda ids, bids, cap: _paid_as_bid(bids)


def _paid_as_bid(bids: np.ndarray) -> _Bargains:
    """No bargaining (ablation): every chosen bidder agrees at step 0 to be paid its own bid.

    The bid R_{i,S} is the least the client accepts (its utility is at its disagreement point
    there), so it takes the price without an offer; the server keeps the whole surplus."""
    return _Bargains(bids.copy(), np.zeros(bids.size, dtype=np.int64), np.ones(bids.size, bool))


def _round_budget(per_round_budget: float, budget_carry: float) -> float:
    """R(t) = R_S + r(t-1), once both are checked."""
    r_s = check_real(
        "incentive.budget",
        per_round_budget,
        low=0.0,
        low_open=True,
        fix="use a per-round reward budget > 0, e.g. 10.0",
    )
    if not (math.isfinite(budget_carry) and budget_carry >= 0):
        raise ValueError(f"budget_carry={budget_carry!r} must be >= 0 (last round's carried)")
    return r_s + float(budget_carry)


@dataclasses.dataclass
class _Passes:
    """What the selection passes of one round collect; the array lists hold one entry per pass."""

    ids: list[np.ndarray] = dataclasses.field(default_factory=list)  # clients who agreed
    bids: list[np.ndarray] = dataclasses.field(default_factory=list)  # their R_{i,S}
    caps: list[np.ndarray] = dataclasses.field(default_factory=list)  # the pass's cap, per client
    prices: list[np.ndarray] = dataclasses.field(default_factory=list)  # their agreed x_i
    steps: list[np.ndarray] = dataclasses.field(default_factory=list)  # their A_i
    disagreed: list[np.ndarray] = dataclasses.field(default_factory=list)  # breakdowns
    announced_caps: list[float] = dataclasses.field(default_factory=list)  # one per pass
    num_bids: list[int] = dataclasses.field(default_factory=list)
    num_candidates: list[int] = dataclasses.field(default_factory=list)

    def add_bargains(
        self,
        ids: np.ndarray,
        bids: np.ndarray,
        cap: float,
        price: np.ndarray,
        steps: np.ndarray,
        agreed: np.ndarray,
    ) -> None:
        """Records one pass's bargainings: the agreed clients, and those that broke down."""
        self.ids.append(ids[agreed])
        self.bids.append(bids[agreed])
        self.caps.append(np.full(int(agreed.sum()), cap))
        self.prices.append(price[agreed])
        self.steps.append(steps[agreed])
        self.disagreed.append(ids[~agreed])


def _joined(parts: list[np.ndarray], dtype: Any) -> np.ndarray:
    """The passes' arrays end to end (empty when no pass bargained)."""
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype)


def _selection_passes(
    ids: np.ndarray,
    budget: float,
    m: int,
    bids_fn: BidsFn,
    pricing: Pricing,
    rng: np.random.Generator,
    parts: MechanismParts,
) -> tuple[_Passes, float]:
    """Steps 1-4 of :func:`select_incentive`: the first pass, then the additional ones (unless
    ``parts.additional_selection`` is off).

    Returns the passes' record and L, what is left of ``budget`` after the payments.
    """
    passes = _Passes()
    pool = budget  # L: what is not yet paid
    slots = m  # M - |C|
    remaining = ids  # not yet selected, not yet bargained with
    max_passes = m + 1 if parts.additional_selection else 1
    for _ in range(max_passes):  # sections 4-5 once, then at most M repetitions of section 6
        if slots == 0 or remaining.size == 0:
            break
        # --- announce the cap, collect the bids ---
        cap = pool / slots
        bid_ids, amounts = _received_bids(bids_fn([int(i) for i in remaining], cap), remaining)
        passes.announced_caps.append(cap)
        passes.num_bids.append(int(bid_ids.size))
        qualifies = amounts <= cap
        passes.num_candidates.append(int(qualifies.sum()))
        if not qualifies.any():
            break
        # --- cheapest first, at most the open slots ---
        c_ids, c_bids = bid_ids[qualifies], amounts[qualifies]
        order = _random_order(c_bids, rng)[:slots]
        c_ids, c_bids = c_ids[order], c_bids[order]
        # --- one bargaining per chosen client (or, ablation, its bid as the price) ---
        price, steps, agreed = pricing(c_ids, c_bids, cap)
        passes.add_bargains(c_ids, c_bids, cap, price, steps, agreed)
        # --- pool the leftover for the next pass ---
        pool = max(0.0, budget - math.fsum(np.concatenate(passes.prices).tolist()))
        slots -= int(agreed.sum())
        remaining = remaining[~np.isin(remaining, c_ids)]
    return passes, pool


def _round_record(
    passes: _Passes, budget: float, m: int, carried: float, delta_s: float
) -> IncentiveRound:
    """The :class:`IncentiveRound` of the passes, with what the server knows of the outcome:
    its own realised utility and the Nash products of the bargain and of the exact NBS."""
    selected = _joined(passes.ids, np.int64)
    bids = _joined(passes.bids, np.float64)
    caps = _joined(passes.caps, np.float64)
    payments = _joined(passes.prices, np.float64)
    steps = _joined(passes.steps, np.int64)

    surplus = caps - bids
    pos = surplus > 0
    u_server = np.zeros(selected.size)
    u_server[pos] = np.power(delta_s, steps[pos]) * ((caps[pos] - payments[pos]) / surplus[pos])
    if pos.any():
        with np.errstate(divide="ignore"):
            log_np = float(
                np.sum(np.log(payments[pos] - bids[pos]) + np.log(caps[pos] - payments[pos]))
            )
        log_nbs = float(np.sum(2.0 * np.log(0.5 * surplus[pos])))
        err = float(ape_from_log(log_np, log_nbs))
    else:
        log_np = log_nbs = err = math.nan
    return IncentiveRound(
        budget=budget,
        m=m,
        selected=selected,
        bids=bids,
        caps=caps,
        payments=payments,
        steps=steps,
        server_utility=u_server,
        carried=carried,
        announced_caps=tuple(passes.announced_caps),
        num_bids=tuple(passes.num_bids),
        num_candidates=tuple(passes.num_candidates),
        disagreed=_joined(passes.disagreed, np.int64),
        log_nash_product=log_np,
        log_nash_product_nbs=log_nbs,
        ape=err,
    )
