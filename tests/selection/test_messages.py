"""Tests of the privacy boundary (incentive spec section 3): the messages, the client-side bid and
reply, and the private population."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rayfl.errors import ConfigError
from rayfl.selection import (
    POPULATIONS,
    Bid,
    BidParams,
    ClientPrivate,
    LocalClients,
    LossReport,
    Offer,
    PopulationParams,
    Response,
    client_reply,
    draw_client,
    draw_population,
    make_bid,
    reference_time,
)
from rayfl.selection.bargaining import server_offer_price
from rayfl.selection.messages import bid_terms, client_replies, offers_by_client
from rayfl.selection.population import population_params

PRIVATE_NAMES = {f.name for f in dataclasses.fields(ClientPrivate)} - {"client_id"}
FORBIDDEN = PRIVATE_NAMES | {
    "loss",
    "size",
    "cost",
    "phi",
    "performance",
    "tau",
    "c_comp",
    "c_comm",
}


def private(**kw) -> ClientPrivate:
    base = {
        "client_id": 0,
        "gamma": 1.0,
        "mu": 1.0,
        "delta_i": 0.95,
        "beta_i": 0.002,
        "data_size": 600,
        "speed": 0.5,
    }
    return ClientPrivate(**(base | kw))


# --- the messages ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "names"),
    [
        (Bid, ("client_id", "amount")),
        (Offer, ("client_id", "step", "price")),
        (Response, ("client_id", "step", "accept")),
        (LossReport, ("client_id", "loss")),
    ],
)
def test_messages_have_exactly_the_allowed_fields(cls, names):
    assert tuple(f.name for f in dataclasses.fields(cls)) == names


@pytest.mark.parametrize("cls", [Bid, Offer, Response])
def test_selection_messages_carry_nothing_private(cls):
    assert not {f.name for f in dataclasses.fields(cls)} & FORBIDDEN


@pytest.mark.parametrize(
    "msg", [Bid(1, 0.5), Offer(1, 2, 0.7), Response(1, 2, True), LossReport(1, 0.3)]
)
def test_messages_are_frozen_and_slotted(msg):
    assert not hasattr(msg, "__dict__")
    with pytest.raises(dataclasses.FrozenInstanceError):
        msg.client_id = 2  # type: ignore[misc]


def test_private_fields_are_what_the_spec_keeps_private():
    assert {"gamma", "mu", "delta_i", "beta_i", "data_size", "speed"} == PRIVATE_NAMES


# --- the bid (section 3) ---------------------------------------------------------------------------


def test_make_bid_written_out():
    # tau = E |D| a = 2 * 100 * 2 = 400, tau_ref = 200; e = 2 * 0.2 - 0.5 * 400 / 200 = -0.6;
    # phi = 0.001 * 2 * 100 + 0.1 = 0.3; bid = max(0, 0.3 + 0.6) = 0.9.
    p = private(gamma=2.0, mu=0.5, data_size=100, speed=2.0)
    cfg = BidParams(epochs=2)
    assert bid_terms(p, 0.2, 200.0, cfg) == pytest.approx((-0.6, 0.3))
    b = make_bid(p, 0.2, 200.0, cfg)
    assert b == Bid(0, pytest.approx(0.9))
    assert type(b) is Bid
    # a high loss makes e > phi: the bid is clipped at 0.
    assert make_bid(p, 5.0, 200.0, cfg).amount == 0.0


@settings(max_examples=100, deadline=None)
@given(
    low=st.floats(0.0, 5.0),
    extra=st.floats(0.0, 5.0),
    gamma=st.floats(0.01, 3.0),
    mu=st.floats(0.01, 3.0),
)
def test_a_higher_loss_never_raises_the_bid(low, extra, gamma, mu):
    p = private(gamma=gamma, mu=mu)
    a = make_bid(p, low, 300.0, BidParams()).amount
    b = make_bid(p, low + extra, 300.0, BidParams()).amount
    assert b <= a and a >= 0.0 and b >= 0.0


def test_make_bid_rejects_bad_inputs():
    with pytest.raises(ValueError, match="tau_ref"):
        make_bid(private(), 1.0, 0.0, BidParams())
    with pytest.raises(ValueError, match="loss"):
        make_bid(private(), float("nan"), 1.0, BidParams())


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"epochs": 0}, "incentive.epochs"),
        ({"c_comp": -0.1}, "incentive.c_comp"),
        ({"c_comm": float("inf")}, "incentive.c_comm"),
    ],
)
def test_bid_params_validate(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        BidParams(**kwargs)


# --- the client's reply (section 5) ----------------------------------------------------------------


def test_client_reply_counters_then_accepts():
    p = private(beta_i=0.25, delta_i=0.9)  # Delta_i = 0.25 * 0.9 / 0.9 = 0.25
    # k = 0: the server offers the bid (U_i = 0 < T_i(0) = 1): counter with the cap at step 1.
    r = client_reply(p, 0.2, 1.0, 0.9, Offer(0, 0, 0.2))
    assert r == Offer(0, 1, pytest.approx(1.0))
    # k = 1: U_i = 0.25 < T_i(1) = 0.75: counter with bid + 0.75 * S = 0.8 at step 3.
    r = client_reply(p, 0.2, 1.0, 0.9, Offer(0, 2, 0.4))
    assert r == Offer(0, 3, pytest.approx(0.8))
    # k = 2: U_i = 0.5 >= T_i(2) = 0.5: accept.
    assert client_reply(p, 0.2, 1.0, 0.9, Offer(0, 4, 0.6)) == Response(0, 4, True)


def test_client_reply_checks_the_offer():
    with pytest.raises(ValueError):
        client_reply(private(), 0.2, 1.0, 0.95, Offer(1, 0, 0.2))  # someone else's offer
    with pytest.raises(ValueError):
        client_reply(private(), 0.2, 1.0, 0.95, Offer(0, 1, 0.2))  # odd steps are the client's


def test_client_replies_answer_a_window_up_to_the_first_acceptance():
    p = private(beta_i=0.25, delta_i=0.9)  # the example above, all three offers in one message
    offers = [Offer(0, 0, 0.2), Offer(0, 2, 0.4), Offer(0, 4, 0.6), Offer(0, 6, 0.8)]
    replies = client_replies(p, 0.2, 1.0, 0.9, offers)
    assert replies == [Offer(0, 1, pytest.approx(1.0)), Offer(0, 3, pytest.approx(0.8))] + [
        Response(0, 4, True)  # and offer 6 goes unanswered: the bargaining is over
    ]
    assert client_replies(p, 0.2, 1.0, 0.9, offers[:2]) == replies[:2]  # no acceptance yet
    assert client_replies(p, 0.2, 1.0, 0.9, []) == []
    with pytest.raises(ValueError):
        client_replies(p, 0.2, 1.0, 0.9, [Offer(0, 0, 0.2), Offer(0, 4, 0.6)])  # a gap
    with pytest.raises(ValueError):
        client_replies(p, 0.2, 1.0, 0.9, [Offer(1, 0, 0.2)])  # someone else's offer


@settings(max_examples=100, deadline=None)
@given(
    beta_i=st.floats(0.001, 0.3),
    delta_i=st.floats(0.5, 0.99),
    bid=st.floats(0.0, 2.0),
    surplus=st.one_of(st.just(0.0), st.floats(0.0, 3.0)),
    beta_s=st.floats(0.001, 0.3),
    k0=st.integers(0, 600),
    n=st.integers(1, 40),
)
def test_client_replies_equal_one_client_reply_per_offer(
    beta_i, delta_i, bid, surplus, beta_s, k0, n
):
    """Bit for bit: the vectorised window gives the one-offer-at-a-time answers."""
    p = private(beta_i=beta_i, delta_i=delta_i)
    cap = bid + surplus
    offers = [
        Offer(0, 2 * k, float(server_offer_price(k, cap, bid, beta_s))) for k in range(k0, k0 + n)
    ]
    one = []
    for o in offers:
        one.append(client_reply(p, bid, cap, 0.95, o))
        if isinstance(one[-1], Response):
            break
    assert client_replies(p, bid, cap, 0.95, offers) == one


def test_offers_by_client_sorts_each_clients_offers_by_step():
    offers = [Offer(3, 2, 0.5), Offer(1, 0, 0.1), Offer(3, 0, 0.4), Offer(1, 2, 0.2)]
    assert offers_by_client(offers) == {
        3: [Offer(3, 0, 0.4), Offer(3, 2, 0.5)],
        1: [Offer(1, 0, 0.1), Offer(1, 2, 0.2)],
    }


def test_local_clients_answer_with_messages_only():
    pop = [private(client_id=i, data_size=100 * (i + 1)) for i in range(3)]
    local = LocalClients(pop, [0.1, 0.2, 0.3], 100.0, BidParams(), 0.95)
    bids = local.bids([0, 2], 1.0)
    assert [type(b) for b in bids] == [Bid, Bid] and [b.client_id for b in bids] == [0, 2]
    replies = local.replies([Offer(0, 0, bids[0].amount)], 1.0)
    assert len(replies) == 1 and isinstance(replies[0], (Offer, Response))


# --- the population --------------------------------------------------------------------------------


def test_population_is_seeded_per_client():
    a = draw_population([100] * 10, [0.5] * 10, seed=3)
    assert a == draw_population([100] * 10, [0.5] * 10, seed=3)
    assert a != draw_population([100] * 10, [0.5] * 10, seed=4)
    assert a[:5] == draw_population([100] * 5, [0.5] * 5, seed=3)  # independent of N
    assert a[7] == draw_client(7, 3, 100, 0.5)
    assert len({p.gamma for p in a}) == 10


def test_population_draws_lie_in_their_ranges():
    pop = draw_population(np.full(400, 50), np.full(400, 1.0), seed=0)
    d = np.array([p.delta_i for p in pop])
    b = np.array([p.beta_i for p in pop])
    g = np.array([p.gamma for p in pop])
    assert ((d >= 0.94) & (d <= 0.96)).all() and ((b >= 0.0019) & (b <= 0.0021)).all()
    assert (g > 0).all() and g.mean() == pytest.approx(1.0, abs=0.05)
    assert g.std() == pytest.approx(0.3, abs=0.05)


def test_truncation_redraws_to_positive_values():
    params = PopulationParams(gamma_mean=0.1, gamma_std=1.0, mu_mean=0.1, mu_std=1.0)
    pop = draw_population(np.full(300, 10), np.full(300, 1.0), seed=0, params=params)
    assert all(p.gamma > 0 and p.mu > 0 for p in pop)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"beta_i_low": 0.0}, "incentive.beta_i_low"),
        ({"beta_i_high": -1.0}, "incentive.beta_i_high"),
        ({"delta_i_high": 1.0}, "incentive.delta_i_high"),
        ({"delta_i_low": 0.0}, "incentive.delta_i_low"),
        ({"delta_i_low": 0.97}, "incentive.delta_i_high"),  # high < low
        ({"gamma_mean": 0.0}, "incentive.gamma_mean"),
        ({"mu_std": -0.3}, "incentive.mu_std"),
    ],
)
def test_population_params_validate(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        PopulationParams(**kwargs)


def test_named_populations():
    assert set(POPULATIONS) == {"default", "narrow", "wide"}
    assert POPULATIONS["narrow"].beta_i_low == 0.00199
    assert POPULATIONS["wide"].delta_i_low == 0.8
    assert population_params("default") == PopulationParams()
    with pytest.raises(ConfigError, match="incentive.population"):
        population_params("tiny")


def test_reference_time_is_the_median_training_time():
    pop = [private(client_id=i, data_size=s, speed=1.0) for i, s in enumerate([10, 30, 20])]
    assert reference_time(pop, epochs=2) == 40.0
    with pytest.raises(ValueError):
        reference_time([], 1)
