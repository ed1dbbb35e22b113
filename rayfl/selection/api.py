"""The selector interface of synchronous rounds: explicit state, and one typed channel to the clients.

A selector is a value, in the shape of optax's ``GradientTransformation``: ``init(num_clients) ->
state`` and ``select(context, state, ask) -> (selection, state)``. Its state is explicit (the
incentive mechanism's carried budget, a bandit's counts), so the rounds engine checkpoints it and
a resumed run continues bit-identically; the selector never edits the engine.

Whatever a selector needs to learn from the clients it asks through ``ask(query, items,
payload)``. The question is answered *inside the client's worker* by a :class:`QueryHandler` the
selector registers under the query's name; the handler sees the client (:class:`ClientView`: its
loss on w(t), its data size, its private traits) and returns replies. A handler declares the
reply types that may leave the worker, and the server refuses any other type (:func:`check_replies`):
that is how the incentive mechanism's privacy guarantee (only ``Bid``, ``Offer`` and ``Response``
reach the server during selection; pow-d's ``LossReport`` by that algorithm's design) holds for
any selector, not by convention. The same selector value is built from the config on the server
and in every worker (:func:`rayfl.selection.shipped.build_selector`), so both agree on the
handlers.

The engine checks what ``select`` returns (:func:`checked_selection`): known, distinct, integer
client ids, at most M(t) of them (none is a skipped round, as the incentive mechanism does when
nobody bids under the cap), and aligned, finite payments. Every failure is one line naming
``selection.kind``.

A custom selector in a few lines (its own state, its own query)::

    def least_recent() -> Selector:
        def select(ctx, last_seen, ask):
            reports = ask("loss", range(ctx.num_clients))  # [LossReport], one per client
            losses = np.array([r.loss for r in reports])
            chosen = np.lexsort((-losses, last_seen))[: ctx.m]  # longest unseen, then lossiest
            seen = last_seen.copy()
            seen[chosen] = ctx.t
            return Selection(chosen, record={"losses": losses.tolist()}), seen

        def report_loss(client, items, payload):
            return LossReport(client.client_id, client.loss())

        return Selector(
            init=lambda n: np.full(n, -1),
            select=select,
            handlers={"loss": QueryHandler(report_loss, (LossReport,))},
        )
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

import numpy as np

from rayfl.errors import RayflError
from rayfl.selection.messages import ClientPrivate
from rayfl.validation import is_int

ExperimentConfig = Any
"""``rayfl.config.ExperimentConfig``, which this package cannot import: the config imports it to
validate the incentive constants, so the reverse import would be a cycle."""


@dataclasses.dataclass(frozen=True, eq=False)
class RoundContext:
    """What the server knows when round t's selection starts (all public to the server)."""

    t: int
    """The round, 0-based."""
    num_clients: int
    """N; client ids are 0, ..., N - 1."""
    m: int
    """M(t) = max(1, floor(K N)) (``selection.k_fraction``): select at most this many."""
    sizes: np.ndarray
    """(N,) int64 |D_i|, read-only: the public data sizes FedAvg weights by."""
    rng: np.random.Generator
    """``seeding.rng(seed, SELECTION, t)``: the round's only source of randomness, so a selection
    depends on (seed, t) alone, whatever the pool size, and a resumed run draws the same."""
    accuracy: tuple[float, ...]
    """acc(w(0)), ..., acc(w(t)): the evaluated accuracies so far (NaN where not evaluated)."""
    cfg: ExperimentConfig
    """The run's config (``selection``, ``incentive``, ...)."""


@dataclasses.dataclass(frozen=True, eq=False)
class Selection:
    """C(t) and what the selector records about it."""

    clients: Sequence[int] | np.ndarray
    """The selected client ids, in the order they train (the FedAvg sum follows it); empty skips
    the round (w(t+1) = w(t))."""
    payments: Sequence[float] | np.ndarray = ()
    """What each selected client is paid, aligned with ``clients``; empty (the default) when the
    selector pays nobody. Enters the server's and clients' utilities (spec section 8)."""
    record: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """Extra columns of this round's row of rounds.parquet (pow-d: candidates and their losses;
    incentive: bids, caps, steps, ...). The same names every round."""
    metrics: Mapping[str, float] = dataclasses.field(default_factory=dict)
    """Extra metric columns of this round's row of metrics.parquet (e.g. ``incentive/carried``)."""


class ClientView(Protocol):
    """One client as a query handler sees it, inside the client's own worker.

    Everything here stays on the worker; only the handler's replies leave it.
    """

    client_id: int
    t: int
    """The round."""
    weights: np.ndarray
    """(P,) float32 w(t), read from the object store once per worker call."""
    cfg: ExperimentConfig
    data_size: int
    """|D_i|, samples."""
    reference_time: float
    """tau_ref = median_i E |D_i| a_i, a public normaliser of training times (spec section 3)."""

    def loss(self) -> float:
        """F_i(w(t)) on ``selection.loss_batches`` seeded local mini-batches (cached per round)."""
        ...

    def traits(self) -> ClientPrivate:
        """The client's private numbers (costs, sensitivities, bargaining parameters, speed)."""
        ...


class QueryHandler(NamedTuple):
    """A client's answer to one kind of query; runs on the worker that serves the client.

    ``handle(client, items, payload)`` is called once per client the query addresses, with that
    client's items in the order asked (its offers, or ``[client_id]`` for a query by id) and the
    query's payload (the announced cap, ...). It returns a list of replies (or a single reply;
    ``[]`` sends nothing). ``replies`` lists the reply types that may reach the server, by exact
    type: a subclass could carry extra (private) fields, so it is refused too.
    """

    handle: Callable[[ClientView, list[Any], Any], Any]
    replies: tuple[type, ...]


class Ask(Protocol):
    """The engine's channel to the clients: the replies of the addressed clients' handlers.

    ``items`` are client ids, or messages with a ``client_id`` (offers); replies come back
    grouped by client in the order of the clients' first items, whatever the number of workers.
    """

    def __call__(self, query: str, items: Iterable[Any], payload: Any = None) -> list[Any]: ...


class Selector(NamedTuple):
    """A client selector: ``init(num_clients) -> state``, ``select(context, state, ask) ->
    (Selection, state)``, and the query handlers its ``ask`` calls reach on the workers.

    ``select`` must not mutate ``state`` in place (return a new one): the engine checkpoints the
    state it returned, and a resumed run starts from that.
    """

    init: Callable[[int], Any]
    select: Callable[[RoundContext, Any, Ask], tuple[Selection, Any]]
    handlers: Mapping[str, QueryHandler] = types.MappingProxyType({})


# --- checks the engine applies ---------------------------------------------------------------------


def _fail(kind: str, problem: str) -> RayflError:
    return RayflError(f"selection.kind={kind!r}: {problem}")


def checked_selector(kind: str, selector: Any) -> Selector:
    """``selector`` if it is a :class:`Selector` whose handlers declare reply types."""
    if not isinstance(selector, Selector):
        raise _fail(kind, f"the factory returned a {type(selector).__name__}, not a rayfl Selector")
    if not (callable(selector.init) and callable(selector.select)):
        raise _fail(kind, "Selector.init and Selector.select must be callables")
    for name, h in selector.handlers.items():
        if not (
            isinstance(h, QueryHandler)
            and callable(h.handle)
            and isinstance(h.replies, tuple)
            and h.replies
            and all(isinstance(tp, type) for tp in h.replies)
        ):
            raise _fail(
                kind,
                f"handler {name!r} must be a QueryHandler(handle, replies) with replies a "
                "non-empty tuple of the reply types it may send",
            )
    return selector


def by_client(items: Iterable[Any]) -> dict[int, list[Any]]:
    """Items grouped by client (a client id, or a message's ``client_id``), in first-seen order."""
    out: dict[int, list[Any]] = {}
    for x in items:
        out.setdefault(int(getattr(x, "client_id", x)), []).append(x)
    return out


def check_asked(kind: str, query: str, items: Sequence[Any], num_clients: int) -> None:
    """Every item of an ``ask`` names a client 0 <= i < N (by id or by ``client_id``)."""
    for x in items:
        c = getattr(x, "client_id", x)
        if not is_int(c) or not 0 <= int(c) < num_clients:
            raise _fail(
                kind,
                f"ask({query!r}) addressed {c!r}, not a client id in [0, {num_clients}): ask "
                "client ids or messages with a client_id",
            )


def check_replies(kind: str, query: str, handler: QueryHandler, replies: Sequence[Any]) -> None:
    """Every reply is of a type the handler declared (exactly): the server's privacy guard."""
    for r in replies:
        if type(r) not in handler.replies:
            allowed = ", ".join(tp.__name__ for tp in handler.replies)
            raise _fail(
                kind,
                f"query {query!r} replied a {type(r).__name__}, which its handler does not "
                f"declare (replies: {allowed}): only declared types may reach the server",
            )


def checked_selection(kind: str, out: Any, ctx: RoundContext) -> tuple[Selection, Any]:
    """(selection, state) from ``select``'s result, with ``clients`` as (|C|,) int64 and
    ``payments`` as float64 (empty or aligned); one-line errors for anything the engine cannot run."""
    if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], Selection)):
        got = type(out).__name__
        if isinstance(out, tuple):
            got = f"({', '.join(type(x).__name__ for x in out)})"
        raise _fail(kind, f"select returned {got}: return (Selection, state)")
    sel, state = out
    clients = _checked_clients(kind, sel.clients, ctx)
    payments = np.asarray(sel.payments)
    if payments.size and (payments.ndim != 1 or payments.size != clients.size):
        raise _fail(
            kind, f"{payments.size} payments for {clients.size} clients: one per client, or none"
        )
    if payments.size and (payments.dtype.kind not in "iuf" or not np.isfinite(payments).all()):
        raise _fail(kind, f"payments {payments.tolist()!r} must be finite numbers")
    for what, names in (("record", sel.record), ("metrics", sel.metrics)):
        if not isinstance(names, Mapping) or not all(isinstance(k, str) for k in names):
            raise _fail(kind, f"Selection.{what} must be a mapping from column names to values")
    return (
        dataclasses.replace(sel, clients=clients, payments=payments.astype(np.float64)),
        state,
    )


def _checked_clients(kind: str, ids: Any, ctx: RoundContext) -> np.ndarray:
    """(|C|,) int64: integer ids in [0, N), distinct, at most M(t)."""
    arr = np.asarray(ids)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)  # a skipped round
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise _fail(kind, f"selected {arr.tolist()!r}: client ids must be a 1-D list of integers")
    arr = arr.astype(np.int64)
    bad = arr[(arr < 0) | (arr >= ctx.num_clients)]
    if bad.size:
        raise _fail(
            kind, f"selected client {int(bad[0])}, outside [0, {ctx.num_clients}): unknown client"
        )
    if np.unique(arr).size != arr.size:
        twice = int(next(i for i in arr if (arr == i).sum() > 1))
        raise _fail(kind, f"selected client {twice} twice: select each client at most once")
    if arr.size > ctx.m:
        raise _fail(kind, f"selected {arr.size} clients in round {ctx.t}, more than M(t)={ctx.m}")
    return arr
