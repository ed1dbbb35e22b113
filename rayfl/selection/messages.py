"""The privacy boundary of the incentive mechanism, visible in the types (spec sections 3-5).

The J-KICS mechanism ("an incentive mechanism that does not need the clients' device
information") lets a client take part without revealing its loss, data size, speed, costs or
bargaining parameters. During selection and bargaining a client sends the server only these
messages, and nothing else:

- :class:`Bid` ``(client_id, amount)``: its minimum reward R_{i,S}(t) (section 3);
- :class:`Offer` ``(client_id, step, price)``: its counter-offers at odd steps (section 5; the
  server's offers, at even steps, use the same type);
- :class:`Response` ``(client_id, step, accept)``: acceptance of the server's offer, or breaking
  off the bargaining.

None of them has a field for a loss, a data size, a cost, a sensitivity, a concession rate or a
discount factor (``tests/selection/test_messages.py`` checks the field lists). The pow-d baseline
is different *by design*: it asks the candidates for their loss, :class:`LossReport`, which is
exactly the device information the incentive mechanism avoids.

:class:`ClientPrivate` is the client's own data. It lives only inside the client worker and is
never serialised to the server; :func:`make_bid` and :func:`client_reply` are the client-side
computations that turn it into messages. :class:`LocalClients` runs that client side in process
(tests, simulations without Ray) behind the two callbacks the selector takes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from rayfl.selection.bargaining import (
    client_accepts,
    client_concession,
    client_offer_price,
)
from rayfl.validation import check_int, check_real

# --- what crosses the boundary ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Bid:
    """A client's minimum reward R_{i,S}(t) >= 0, the only number it sends to be selected."""

    client_id: int
    amount: float


@dataclasses.dataclass(frozen=True, slots=True)
class Offer:
    """A proposed price x at bargaining step alpha: the server's at even steps, the client's at odd."""

    client_id: int
    step: int
    price: float


@dataclasses.dataclass(frozen=True, slots=True)
class Response:
    """accept=True takes the offer made at ``step``; accept=False breaks the bargaining off."""

    client_id: int
    step: int
    accept: bool


@dataclasses.dataclass(frozen=True, slots=True)
class LossReport:
    """pow-d only: a candidate's local loss F_i(w(t)). Reveals the loss, by pow-d's design."""

    client_id: int
    loss: float


Reply = Offer | Response
"""What a client answers to the server's offer: Response(accept=True), a counter Offer (which
rejects the server's), or Response(accept=False) to break off."""

BidsFn = Callable[[Sequence[int], float], Sequence[Bid]]
"""(client_ids, announced cap) -> their bids; a client may decline to bid by sending none."""

RepliesFn = Callable[[Sequence[Offer], float], Sequence[Reply]]
"""(the server's offers, announced cap) -> the clients' Replies, at most one per offer.

The offers may hold several for one client, at consecutive even steps 2k, 2k + 2, ...: offer k' is
made in case the client counters offer k' - 1 and the server refuses that counter. A client
answers them in step order and may stop at its first Response (:func:`client_replies`)."""


# --- what stays with the client --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ClientPrivate:
    """A client's private numbers. Lives only inside the client worker; never serialised to the
    server (the server sees only :class:`Bid`, :class:`Offer` and :class:`Response`)."""

    client_id: int
    gamma: float
    """gamma_i > 0: how much the client values its own loss (section 3)."""
    mu: float
    """mu_i > 0: how much training time costs it."""
    delta_i: float
    """Discount factor per bargaining step, in (0, 1)."""
    beta_i: float
    """Concession rate > 0; its step is Delta_i = beta_i * delta_S / delta_i (section 5)."""
    data_size: int
    """|D_i|, samples."""
    speed: float
    """The clock's a_i: virtual time units per sample (the spec's 1 / f_i), so that
    tau_i = E * |D_i| * speed is the same speed model as the async clock."""

    def training_time(self, epochs: int) -> float:
        """tau_i = E * |D_i| / f_i, virtual time units."""
        return float(epochs * self.data_size * self.speed)


@dataclasses.dataclass(frozen=True)
class BidParams:
    """Public constants of the client's bid (spec section 3); the same for every client."""

    epochs: int = 1
    """E, local epochs per round."""
    c_comp: float = 0.001
    """Computation cost per sample and epoch."""
    c_comm: float = 0.1
    """Communication cost per round."""

    def __post_init__(self) -> None:
        check_int("incentive.epochs", self.epochs, low=1, fix="use at least 1 local epoch")
        check_real("incentive.c_comp", self.c_comp, low=0.0, fix="use a cost >= 0, e.g. 0.001")
        check_real("incentive.c_comm", self.c_comm, low=0.0, fix="use a cost >= 0, e.g. 0.1")


def bid_terms(
    private: ClientPrivate, loss: float, tau_ref: float, cfg: BidParams
) -> tuple[float, float]:
    """(e_i, phi_i): self-estimated performance and cost of section 3 (client side only).

    e_i = gamma_i * F_i(w(t)) - mu_i * tau_i / tau_ref and phi_i = c_comp * E * |D_i| + c_comm.
    """
    if not math.isfinite(loss):
        raise ValueError(f"client {private.client_id}: loss={loss!r} is not finite")
    if not (math.isfinite(tau_ref) and tau_ref > 0):
        raise ValueError(f"tau_ref={tau_ref!r} must be > 0 (the median training time)")
    tau = private.training_time(cfg.epochs)
    performance = private.gamma * loss - private.mu * tau / tau_ref
    cost = cfg.c_comp * cfg.epochs * private.data_size + cfg.c_comm
    return performance, cost


def make_bid(private: ClientPrivate, loss: float, tau_ref: float, cfg: BidParams) -> Bid:
    """The client's minimum reward R_{i,S}(t) = max(0, phi_i(t) - e_i(t)) (spec section 3).

    Its utility is u_i(x) = x + e_i - phi_i with disagreement point 0, so it takes part for any
    x >= phi_i - e_i. A high loss raises e_i and lowers the bid: the cheapest bids come from the
    clients that most help the global model, and no loss leaves the client.

    Args:
        private: the client's own numbers.
        loss: F_i(w(t)), the current global model's loss on (a sample of) its local data.
        tau_ref: the reference training time (median tau over clients), > 0.
        cfg: epochs E and the cost constants (any object with ``epochs``, ``c_comp``, ``c_comm``).

    >>> p = ClientPrivate(0, gamma=1.0, mu=1.0, delta_i=0.95, beta_i=0.002, data_size=600,
    ...                   speed=0.5)
    >>> make_bid(p, loss=0.5, tau_ref=300.0, cfg=BidParams())  # phi = 0.7, e = 0.5 - 1 = -0.5
    Bid(client_id=0, amount=1.2)
    """
    performance, cost = bid_terms(private, loss, tau_ref, cfg)
    return Bid(int(private.client_id), float(max(0.0, cost - performance)))


def client_reply(
    private: ClientPrivate, bid: float, cap: float, delta_s: float, offer: Offer
) -> Reply:
    """The client's answer to the server's k-th offer (step 2k), computed privately (section 5).

    Accepts (Response) when its normalised utility (x - bid) / (cap - bid) >= its next target
    T_i(k) = max(0, 1 - k * Delta_i), Delta_i = beta_i * delta_S / delta_i; otherwise counters
    with its k-th ask x = bid + T_i(k) * (cap - bid) at step 2k + 1.

    Args:
        private: the client's own numbers (beta_i and delta_i are used).
        bid: the amount of the Bid it sent for this cap.
        cap: the announced cap R_{S,i}.
        delta_s: the server's announced discount factor.
        offer: the server's offer, at an even step.
    """
    if offer.client_id != private.client_id:
        raise ValueError(f"offer for client {offer.client_id} sent to client {private.client_id}")
    if offer.step % 2:
        raise ValueError(f"server offers are at even steps, got step {offer.step}")
    k = offer.step // 2
    step_i = client_concession(private.beta_i, delta_s, private.delta_i)
    if bool(client_accepts(offer.price, k, cap, bid, step_i)):
        return Response(private.client_id, offer.step, True)
    return Offer(private.client_id, offer.step + 1, float(client_offer_price(k, cap, bid, step_i)))


def client_replies(
    private: ClientPrivate, bid: float, cap: float, delta_s: float, offers: Sequence[Offer]
) -> list[Reply]:
    """The client's answers to several of the server's offers at once (section 5).

    ``offers`` are its next offers, at consecutive even steps in ascending order, each made in
    case the previous one and the counter to it were refused (:data:`RepliesFn`). Answers each
    as :func:`client_reply` would, vectorised, up to and including the first Response (after
    it the bargaining is over, so the later offers go unanswered).
    """
    if not offers:
        return []
    ks = np.array([o.step for o in offers], dtype=np.int64)
    if any(o.client_id != private.client_id for o in offers):
        raise ValueError(f"offers for other clients sent to client {private.client_id}")
    if (ks % 2).any() or (np.diff(ks) != 2).any():
        raise ValueError(f"server offers are at consecutive even steps, got {ks.tolist()}")
    ks //= 2
    step_i = client_concession(private.beta_i, delta_s, private.delta_i)
    prices = np.array([o.price for o in offers], dtype=np.float64)
    accepts = client_accepts(prices, ks, cap, bid, step_i)  # (len(offers),) bool
    first = int(np.argmax(accepts)) if accepts.any() else len(offers)
    asks = client_offer_price(ks[:first], cap, bid, step_i)
    out: list[Reply] = [
        Offer(private.client_id, o.step + 1, float(x))
        for o, x in zip(offers[:first], asks, strict=True)
    ]
    if first < len(offers):
        out.append(Response(private.client_id, offers[first].step, True))
    return out


def offers_by_client(offers: Sequence[Offer]) -> dict[int, list[Offer]]:
    """The offers of a :data:`RepliesFn` call per client, each client's in step order."""
    out: dict[int, list[Offer]] = {}
    for o in offers:
        out.setdefault(int(o.client_id), []).append(o)
    for group in out.values():
        group.sort(key=lambda o: o.step)
    return out


class LocalClients:
    """The client side of selection and bargaining, run in process behind the two callbacks.

    For tests and simulations without Ray: it holds every client's :class:`ClientPrivate` and
    current loss, and answers :meth:`bids` and :meth:`replies` exactly as client workers would.
    The selector sees only the messages it returns.
    """

    def __init__(
        self,
        population: Mapping[int, ClientPrivate] | Sequence[ClientPrivate],
        losses: Mapping[int, float] | Sequence[float] | np.ndarray,
        tau_ref: float,
        cfg: BidParams,
        delta_s: float,
    ):
        if not isinstance(population, Mapping):
            population = {int(p.client_id): p for p in population}
        self._population = dict(population)
        self._losses = losses
        self._tau_ref = tau_ref
        self._cfg = cfg
        self._delta_s = delta_s
        self._bids: dict[tuple[int, float], float] = {}  # (client, cap) -> the amount it bid

    def bids(self, client_ids: Sequence[int], cap: float) -> list[Bid]:
        """Each client's :func:`make_bid`; remembered for its replies under this cap."""
        out = []
        for i in client_ids:
            b = make_bid(
                self._population[int(i)], float(self._losses[int(i)]), self._tau_ref, self._cfg
            )
            self._bids[(b.client_id, float(cap))] = b.amount
            out.append(b)
        return out

    def replies(self, offers: Sequence[Offer], cap: float) -> list[Reply]:
        """Each addressed client's :func:`client_replies` to its offers (up to its first
        Response)."""
        return [
            r
            for i, mine in offers_by_client(offers).items()
            for r in client_replies(
                self._population[i], self._bids[(i, float(cap))], cap, self._delta_s, mine
            )
        ]
