"""The selectors rayfl ships, written on the selector interface (:mod:`rayfl.selection.api`).

- ``random`` (:func:`random_selector`): M(t) clients uniformly (spec section 9); no state, no
  query.
- ``pow-d`` (:func:`pow_d_selector`): Cho, Wang and Joshi (AISTATS 2022): d candidates by |D_i|,
  the M lossiest of them. Query ``loss``: each candidate reports F_i(w(t)) as a
  :class:`~rayfl.selection.messages.LossReport` (pow-d reveals the loss by design).
- ``incentive`` (:func:`incentive_selector`): the J-KICS round of spec sections 2-6. Query ``bid``
  (the announced cap -> :class:`~rayfl.selection.messages.Bid`) and ``reply`` (a window of the
  server's offers -> :class:`~rayfl.selection.messages.Offer` /
  :class:`~rayfl.selection.messages.Response`); its state is r(t-1), the budget carried over.
  ``incentive.bargaining``, ``incentive.additional_selection`` and ``incentive.carry_over``
  switch parts of the round off (the ablation; :class:`~rayfl.selection.selectors.MechanismParts`).

The maths lives in :mod:`~rayfl.selection.selectors`, :mod:`~rayfl.selection.bargaining` and
:mod:`~rayfl.selection.messages`; this module only wires it to ``ask`` and to the handlers that
answer inside the workers. The three record the same columns (:func:`shipped_record`: NaN or
``[]`` where a column is not theirs), so that their rounds.parquet files line up side by side
(experiment A compares them); a user's selector records only its own.

:func:`build_selector` is the one place a run's selector is built, on the server and in every
worker, from ``selection.kind``: a name of :data:`SELECTORS` or an import path
``package.module:factory``, called with ``selection.params`` as keyword arguments
(:mod:`rayfl.registry`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from rayfl.registry import build
from rayfl.selection.api import (
    Ask,
    ClientView,
    ExperimentConfig,
    QueryHandler,
    RoundContext,
    Selection,
    Selector,
    checked_selector,
)
from rayfl.selection.messages import (
    Bid,
    BidParams,
    LossReport,
    Offer,
    Reply,
    Response,
    client_replies,
    make_bid,
)
from rayfl.selection.selectors import (
    IncentiveRound,
    select_incentive,
    select_pow_d,
    select_random,
)


def _empty_record() -> dict[str, Any]:
    """The shipped selectors' columns, as a selector that has none of them records them."""
    nan = math.nan
    return {
        "budget": nan,
        "announced_caps": [],
        "num_bids": [],
        "num_candidates": [],
        "bids": [],
        "caps": [],
        "steps": [],
        "leftover": nan,
        "carried": nan,
        "disagreed": [],
        "candidates": [],
        "candidate_losses": [],
        "server_bargain_utility": [],
        "log_nash_product": nan,
        "log_nash_product_nbs": nan,
        "nash_product": nan,
        "ape": nan,
    }


SHIPPED_COLUMNS = tuple(_empty_record())
"""The rounds.parquet columns that random, pow-d and incentive all record (spec section 8)."""


def shipped_record(**own: Any) -> dict[str, Any]:
    """A shipped selector's record: its own columns, the others of :data:`SHIPPED_COLUMNS` empty."""
    unknown = set(own) - set(SHIPPED_COLUMNS)
    if unknown:
        raise ValueError(f"not a shipped column: {sorted(unknown)}")
    return {**_empty_record(), **own}


def incentive_record(r: IncentiveRound) -> dict[str, Any]:
    """The incentive round's columns of rounds.parquet (its payments are the engine's column)."""
    return shipped_record(
        budget=r.budget,
        announced_caps=list(r.announced_caps),
        num_bids=list(r.num_bids),
        num_candidates=list(r.num_candidates),
        bids=r.bids.tolist(),
        caps=r.caps.tolist(),
        steps=r.steps.tolist(),
        leftover=float(math.fsum(r.leftover)),
        carried=r.carried,
        disagreed=r.disagreed.tolist(),
        server_bargain_utility=r.server_utility.tolist(),
        log_nash_product=r.log_nash_product,
        log_nash_product_nbs=r.log_nash_product_nbs,
        nash_product=math.exp(r.log_nash_product)
        if math.isfinite(r.log_nash_product)
        else math.nan,
        ape=r.ape,
    )


def _stateless(num_clients: int) -> None:
    return None


# --- random ---------------------------------------------------------------------------------------


def random_selector() -> Selector:
    """M(t) clients drawn uniformly without replacement (spec section 9)."""

    def select(ctx: RoundContext, state: None, ask: Ask) -> tuple[Selection, None]:
        chosen = select_random(np.arange(ctx.num_clients), ctx.m, ctx.rng)
        return Selection(chosen, record=shipped_record()), state

    return Selector(_stateless, select)


# --- pow-d ----------------------------------------------------------------------------------------


def report_loss(client: ClientView, items: list[Any], payload: Any) -> LossReport:
    """pow-d's ``loss`` query, on the worker: the candidate's F_i(w(t))."""
    return LossReport(client.client_id, client.loss())


def pow_d_selector() -> Selector:
    """pow-d with d = ``selection.d`` candidates (:func:`~rayfl.selection.select_pow_d`)."""

    def select(ctx: RoundContext, state: None, ask: Ask) -> tuple[Selection, None]:
        r = select_pow_d(
            ctx.sizes, lambda ids: ask("loss", ids), ctx.cfg.selection.d, ctx.m, ctx.rng
        )
        record = shipped_record(
            candidates=r.candidates.tolist(), candidate_losses=r.losses.tolist()
        )
        return Selection(r.selected, record=record), state

    return Selector(_stateless, select, {"loss": QueryHandler(report_loss, (LossReport,))})


# --- the incentive mechanism ----------------------------------------------------------------------


def client_bid(client: ClientView, items: list[Any], cap: float) -> Bid:
    """The ``bid`` query, on the worker: R_{i,S}(t) from the client's loss, traits and costs
    (spec section 3). The bid does not depend on the cap, and the loss never leaves the worker."""
    cfg = client.cfg
    params = BidParams(cfg.selection.epochs, cfg.incentive.c_comp, cfg.incentive.c_comm)
    return make_bid(client.traits(), client.loss(), client.reference_time, params)


def client_answers(client: ClientView, offers: list[Offer], cap: float) -> list[Reply]:
    """The ``reply`` query, on the worker: the client's answers to a window of the server's
    offers, up to its first Response (spec section 5).

    The bid is recomputed from (t, w(t)): a pure function of them, so any worker answers the
    same, also after the client's calls moved to another worker."""
    bid = client_bid(client, [], cap).amount
    mine = sorted(offers, key=lambda o: o.step)
    return client_replies(client.traits(), bid, cap, client.cfg.incentive.delta_s, mine)


def incentive_selector() -> Selector:
    """The incentive mechanism (:func:`~rayfl.selection.select_incentive`); state: r(t-1)."""

    def select(ctx: RoundContext, carried: float, ask: Ask) -> tuple[Selection, float]:
        r = select_incentive(
            np.arange(ctx.num_clients),
            carried,
            ctx.cfg.incentive.budget,
            ctx.cfg.selection.k_fraction,
            lambda ids, cap: ask("bid", ids, cap),
            lambda offers, cap: ask("reply", offers, cap),
            ctx.cfg.incentive,
            ctx.rng,
            parts=ctx.cfg.incentive.mechanism(),  # all on unless an ablation switches parts off
        )
        return Selection(r.selected, r.payments, incentive_record(r), r.metrics()), r.carried

    handlers = {
        "bid": QueryHandler(client_bid, (Bid,)),
        "reply": QueryHandler(client_answers, (Offer, Response)),
    }
    return Selector(lambda num_clients: 0.0, select, handlers)


# --- the registry ---------------------------------------------------------------------------------


SELECTORS: dict[str, Callable[..., Selector]] = {
    "random": random_selector,
    "pow-d": pow_d_selector,
    "incentive": incentive_selector,
}
"""The selectors rayfl ships, by ``selection.kind``."""


def build_selector(cfg: ExperimentConfig) -> Selector:
    """The run's selector: ``SELECTORS[selection.kind]`` or the factory at the import path
    ``selection.kind`` (``package.module:factory``), called with ``selection.params``
    (:func:`rayfl.registry.build`: the one resolver of every extension point).

    Called on the server and in each worker (which must be able to import a user's module), so
    both hold the same handlers.

    Raises:
        ConfigError: an unknown name, a module that does not import, params the factory does not
            take; RayflError: the factory did not return a :class:`Selector`.
    """
    kind = cfg.selection.kind
    selector = build(
        "selection.kind",
        kind,
        SELECTORS,
        cfg.selection.params,
        "selector",
        params_field="selection.params",
    )
    return checked_selector(kind, selector)
