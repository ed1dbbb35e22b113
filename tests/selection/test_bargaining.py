"""Tests of the bargaining (incentive spec section 5), the exact NBS solvers (section 7) and
Experiment B (section 9).

Hand-computed bargains are written out step by step in comments; the closed form is checked
against a literal step-at-a-time reference; the NBS solvers against brute-force grids and KKT.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from rayfl.errors import ConfigError
from rayfl.selection import (
    BargainParams,
    ape,
    ape_from_log,
    bargain,
    bargain_steps,
    log_nash_product,
    log_nash_product_coupled,
    nash_product_coupled,
    nash_product_separable,
    nbs_coupled,
    nbs_separable,
)
from rayfl.selection.bargaining import ACCEPT_TOL
from rayfl.selection.experiment_b import PAPER_APE, format_experiment_b, run_experiment_b


def reference_bargain(cap, bid, step_s, step_i, max_steps=100_000):
    """Section 5 read literally: one offer per step, plain Python floats. -> (price, steps)."""
    surplus = cap - bid
    if surplus == 0:
        return bid, 0
    for alpha in range(max_steps + 1):
        k = alpha // 2
        if alpha % 2 == 0:  # the server's k-th offer; the client compares with T_i(k)
            x = min(max(cap - max(0.0, 1.0 - k * step_s) * surplus, bid), cap)
            if (x - bid) / surplus >= max(0.0, 1.0 - k * step_i) - ACCEPT_TOL:
                return x, alpha
        else:  # the client's k-th offer; the server compares with T_S(k + 1)
            x = min(max(bid + max(0.0, 1.0 - k * step_i) * surplus, bid), cap)
            if (cap - x) / surplus >= max(0.0, 1.0 - (k + 1) * step_s) - ACCEPT_TOL:
                return x, alpha
    return None, max_steps + 1


# --- hand-computed bargains ------------------------------------------------------------------------


def test_equal_steps_land_on_the_midpoint_after_one_over_delta_steps():
    # Delta = 0.25 both. k=0: server offers U_i=0 < T_i(0)=1; client asks U_i=1, server U_S=0 <
    # T_S(1)=.75. k=1: offer U_i=.25 < .75; ask U_i=.75, U_S=.25 < T_S(2)=.5. k=2: offer U_i=.5 >=
    # T_i(2)=.5: accepted at step 4, the midpoint.
    r = bargain([1.0], [0.2], delta_s=0.9, beta_s=0.25, delta_i=[0.9], beta_i=[0.25])
    assert r.agreed.tolist() == [True]
    assert r.steps.tolist() == [4]
    assert r.price[0] == pytest.approx(0.6)
    assert r.server_utility[0] == pytest.approx(0.9**4 * 0.5)
    assert r.client_utility[0] == pytest.approx(0.9**4 * 0.5)
    assert r.server_gain[0] == pytest.approx(0.9**4 * 0.5 * 0.8)


def test_defaults_with_equal_patience_reach_the_separable_nbs():
    cap, bid = np.array([1.0, 3.0, 0.5]), np.array([0.0, 1.0, 0.4])
    r = bargain(cap, bid, 0.95, 0.002, np.full(3, 0.95), np.full(3, 0.002))
    np.testing.assert_allclose(r.price, nbs_separable(cap, bid), rtol=0, atol=1e-12)
    assert (r.steps == 500).all()  # alpha * Delta >= 1: about 250 offers each


def test_two_clients_written_out():
    # Delta_S = 0.2, delta_S = delta_i = 0.9, so Delta_i = beta_i.
    # Client 0 (Delta_0 = 0.3, cap 1, bid 0): k=0 both reject (T=1, T_S(1)=.8); k=1: offer
    #   U_0=.2 < T_0(1)=.7, ask .7 -> U_S=.3 < T_S(2)=.6; k=2: offer U_0=.4 >= T_0(2)=.4: step 4,
    #   x = 0.4.
    # Client 1 (Delta_1 = 0.1, cap 2, bid 1): k=1 offer .2 < .9, ask .9 -> U_S=.1 < .6; k=2 offer
    #   .4 < .8, ask .8 -> U_S=.2 < T_S(3)=.4; k=3 offer .6 < .7, ask .7 -> U_S=.3 >= T_S(4)=.2:
    #   step 7, x = 1.7.
    cap, bid = np.array([1.0, 2.0]), np.array([0.0, 1.0])
    r = bargain(cap, bid, 0.9, 0.2, [0.9, 0.9], [0.3, 0.1])
    np.testing.assert_allclose(r.price, [0.4, 1.7], atol=1e-12)
    assert r.steps.tolist() == [4, 7]
    np.testing.assert_allclose(r.server_utility, [0.9**4 * 0.6, 0.9**7 * 0.3])
    np.testing.assert_allclose(r.client_utility, [0.9**4 * 0.4, 0.9**7 * 0.7])
    # NP = (0.4 * 0.6) * (0.7 * 0.3) = 0.0504 vs the NBS (0.5 * 0.5)^2 = 0.0625: APE 19.36 %.
    np_b = nash_product_separable(r.price, cap, bid)
    np_n = nash_product_separable(nbs_separable(cap, bid), cap, bid)
    assert np_b == pytest.approx(0.0504)
    assert np_n == pytest.approx(0.0625)
    assert ape(np_b, np_n) == pytest.approx(19.36)


def test_client_scales_its_step_by_the_ratio_of_patience():
    # delta_S / delta_i = 0.9 / 0.45 = 2, so beta_i = 0.125 gives Delta_i = 0.25 = Delta_S:
    # the midpoint at step 4 (1 / Delta even; with Delta = 0.2 it would be the client's ask at
    # step 5, share 1 - 2 * 0.2 = 0.6, i.e. within Delta / 2 of the midpoint).
    r = bargain([1.0], [0.0], 0.9, 0.25, [0.45], [0.125])
    assert r.price[0] == pytest.approx(0.5)
    assert r.client_utility[0] == pytest.approx(0.45 ** r.steps[0] * 0.5)


def test_zero_surplus_agrees_at_once():
    r = bargain([1.0, 2.0], [1.0, 0.0], 0.95, 0.002, [0.95, 0.95], [0.002, 0.002])
    assert r.steps[0] == 0 and r.price[0] == 1.0 and r.agreed[0]
    assert r.server_utility[0] == 0.0 and r.client_utility[0] == 0.0
    assert r.price[1] == pytest.approx(1.0)  # the other client is unaffected


def test_cap_below_bid_is_not_a_candidate():
    with pytest.raises(ValueError, match="not a candidate"):
        bargain([1.0, 0.5], [0.2, 0.6], 0.95, 0.002, [0.95, 0.95], [0.002, 0.002])


def test_breakdown_after_max_steps():
    r = bargain([1.0, 1.0], [0.0, 1.0], 0.95, 0.002, [0.95, 0.95], [0.002, 0.002], max_steps=10)
    assert r.agreed.tolist() == [False, True]  # zero surplus still agrees at step 0
    assert math.isnan(r.price[0]) and r.steps[0] == 11
    assert r.server_utility[0] == 0.0 and r.client_utility[0] == 0.0


def test_a_stubborn_client_gets_the_whole_surplus():
    # Delta_i = 0: the client always asks the cap; the server concedes fully at T_S = 0, i.e. it
    # accepts the ask at step 2k + 1 with k + 1 = 1 / Delta_S = 4 -> step 7.
    r = bargain_steps([1.0], [0.0], 0.25, [0.0], 0.9, [0.9])
    assert r.price[0] == pytest.approx(1.0) and r.steps[0] == 7


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"beta_s": 0.0}, "incentive.beta_s"),
        ({"beta_s": -0.1}, "incentive.beta_s"),
        ({"delta_s": 1.0}, "incentive.delta_s"),
        ({"delta_s": -0.01}, "incentive.delta_s"),
        ({"beta_i": [0.002, 0.0]}, "incentive.beta_i"),
        ({"beta_i": [0.002, -1.0]}, "incentive.beta_i"),
        ({"delta_i": [0.95, 1.0]}, "incentive.delta_i"),
        ({"delta_i": [0.0, 0.95]}, "incentive.delta_i"),
        ({"delta_i": [1.5, 0.95]}, "incentive.delta_i"),
        ({"max_steps": -1}, "incentive.max_steps"),
    ],
)
def test_bad_parameters_raise_config_error_naming_the_field(kwargs, field):
    args = {
        "cap": [1.0, 1.0],
        "bid": [0.0, 0.0],
        "delta_s": 0.95,
        "beta_s": 0.002,
        "delta_i": [0.95, 0.95],
        "beta_i": [0.002, 0.002],
    } | kwargs
    with pytest.raises(ConfigError, match=field):
        bargain(**args)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"beta_s": 0.0}, "incentive.beta_s"),
        ({"delta_s": 1.0}, "incentive.delta_s"),
        ({"delta_s": float("nan")}, "incentive.delta_s"),
        ({"max_steps": -5}, "incentive.max_steps"),
        ({"max_steps": 2.5}, "incentive.max_steps"),
    ],
)
def test_bargain_params_validate(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        BargainParams(**kwargs)


def test_zero_server_discount_is_allowed():
    r = bargain([1.0], [0.0], 0.0, 0.25, [0.9], [0.25])
    assert r.agreed[0] and r.server_utility[0] == 0.0  # 0 ** A with A > 0


# --- the closed form is the literal step-by-step protocol -----------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    cap=st.floats(0.01, 100.0),
    frac=st.floats(0.0, 1.0),
    step_s=st.floats(0.005, 1.5),
    step_i=st.floats(0.0, 1.5),
)
# a surplus of one ulp: the offers round to bid or cap, the first acceptance is far from the guess
@example(cap=1.0, frac=0.9999999999999999, step_s=0.005859375, step_i=0.0)
def test_closed_form_matches_the_literal_protocol(cap, frac, step_s, step_i):
    bid = cap * frac
    x_ref, a_ref = reference_bargain(cap, bid, step_s, step_i)
    r = bargain_steps([cap], [bid], step_s, [step_i], 0.9, [0.9])
    assert r.steps[0] == a_ref
    assert r.price[0] == x_ref


@pytest.mark.parametrize(
    ("cap", "step_s", "step_i", "steps"),
    [
        # the server's 86th offer, cap - 0.496 S, rounds to cap: accepted at step 172, although
        # k (Delta_S + Delta_i) >= 1 only from k = 171 (a fix-up of at most 64 moves gave 214)
        (1.0, 0.005859375, 0.0, 172),
        # the offers round to bid until the client's target is 0: 90 offers past the guess of
        # 910 (a fix-up of at most 64 moves raised RuntimeError)
        (1.0, 0.0001, 0.001, 1003),
        (1.0, 0.001, 0.01, 103),
    ],
)
def test_a_surplus_of_one_ulp_follows_the_literal_protocol(cap, step_s, step_i, steps):
    bid = float(np.nextafter(cap, 0.0))
    x_ref, a_ref = reference_bargain(cap, bid, step_s, step_i)
    r = bargain_steps([cap], [bid], step_s, [step_i], 0.9, [0.9])
    assert a_ref == steps
    assert r.steps.tolist() == [a_ref] and r.price.tolist() == [x_ref]


@settings(max_examples=200, deadline=None)
@given(
    cap=st.floats(1e-3, 1e3),
    frac=st.floats(0.0, 1.0),
    beta_s=st.floats(1e-3, 0.5),
    beta_i=st.floats(1e-3, 0.5),
    delta_s=st.floats(0.0, 0.999),
    delta_i=st.floats(0.01, 0.999),
)
def test_agreed_price_lies_between_bid_and_cap(cap, frac, beta_s, beta_i, delta_s, delta_i):
    bid = cap * frac
    r = bargain([cap], [bid], delta_s, beta_s, [delta_i], [beta_i])
    assert r.agreed[0]
    assert bid <= r.price[0] <= cap
    assert 0.0 <= r.server_utility[0] <= 1.0 and 0.0 <= r.client_utility[0] <= 1.0
    assert r.steps[0] >= 0


@settings(max_examples=100, deadline=None)
@given(step=st.floats(0.001, 0.5), cap=st.floats(0.1, 10.0), frac=st.floats(0.0, 0.99))
def test_equal_steps_always_split_the_surplus_evenly_or_within_one_step(step, cap, frac):
    bid = cap * frac
    r = bargain_steps([cap], [bid], step, [step], 0.9, [0.9])
    share = (r.price[0] - bid) / (cap - bid)
    # agreement at the first alpha with alpha * Delta >= 1; the share is k * Delta or 1 - k * Delta
    # with k = floor(alpha / 2): within Delta / 2 of one half, exactly 1/2 when 1/Delta is whole.
    assert abs(share - 0.5) <= step / 2 + 1e-9


def test_vectorised_over_any_shape():
    cap = np.full((3, 4), 2.0)
    bid = np.linspace(0.0, 1.9, 12).reshape(3, 4)
    r = bargain(cap, bid, 0.95, 0.002, np.full((3, 4), 0.95), np.full((3, 4), 0.002))
    assert r.price.shape == (3, 4)
    np.testing.assert_allclose(r.price, (cap + bid) / 2, atol=1e-12)


# --- exact NBS solvers -----------------------------------------------------------------------------


def test_nbs_separable_beats_every_grid_point():
    rng = np.random.default_rng(0)
    cap = rng.uniform(1.0, 3.0, 3)
    bid = cap * rng.uniform(0.0, 0.9, 3)
    best = log_nash_product(nbs_separable(cap, bid), cap, bid)
    grid = np.linspace(0.0, 1.0, 1001)[1:-1]
    for i in range(3):  # separable: maximise each factor on its own grid
        xs = bid[i] + grid * (cap[i] - bid[i])
        factor = np.log(xs - bid[i]) + np.log(cap[i] - xs)
        others = log_nash_product(
            np.delete(nbs_separable(cap, bid), i), np.delete(cap, i), np.delete(bid, i)
        )
        assert best >= factor.max() + others - 1e-12


def test_log_nash_product_is_the_log_and_does_not_underflow():
    cap, bid, x = np.array([1.0, 2.0]), np.array([0.0, 1.0]), np.array([0.4, 1.7])
    assert math.exp(log_nash_product(x, cap, bid)) == pytest.approx(
        nash_product_separable(x, cap, bid)
    )
    assert math.exp(log_nash_product_coupled(x, cap, bid)) == pytest.approx(
        nash_product_coupled(x, cap, bid)
    )
    # 11 clients with a surplus of 1e-20: NP = (0.25e-40)^11 underflows, its log does not.
    cap = np.full(11, 1e-20)
    bid = np.zeros(11)
    x = nbs_separable(cap, bid)
    assert nash_product_separable(x, cap, bid) == 0.0
    assert log_nash_product(x, cap, bid) == pytest.approx(11 * 2 * math.log(0.5e-20))


def test_nash_products_reject_prices_outside_bid_cap():
    with pytest.raises(ValueError):
        log_nash_product([1.5], [1.0], [0.0])
    with pytest.raises(ValueError):
        nash_product_coupled([-0.1], [1.0], [0.0])


def test_nbs_coupled_splits_the_surplus_among_n_plus_one_players():
    # no cap and no budget binds: y_i = sum S / (n + 1) = 3 / 4 each.
    cap, bid = np.array([1.0, 2.0, 1.5]), np.array([0.0, 1.0, 0.5])
    np.testing.assert_allclose(nbs_coupled(cap, bid, budget=100.0), bid + 0.75)


def test_nbs_coupled_with_binding_cap_and_budget_written_out():
    # S = (0.1, 2, 2), sum 4.1. Unconstrained level: L + min(.1, L) + 2 min(2, L) = 4.1 with
    # L > .1 -> 3L + .1 = 4.1 -> L = 4/3: y = (.1, 4/3, 4/3).
    cap, bid = np.array([0.1, 2.0, 2.0]), np.zeros(3)
    np.testing.assert_allclose(nbs_coupled(cap, bid, 100.0), [0.1, 4 / 3, 4 / 3])
    # Budget 2.1 < 0.1 + 8/3: min(.1, t) + 2 min(2, t) = 2.1 -> t = 1: y = (.1, 1, 1).
    np.testing.assert_allclose(nbs_coupled(cap, bid, 2.1), [0.1, 1.0, 1.0])


def _coupled_grid_max(cap, bid, budget, n=401):
    xs = [np.linspace(b, c, n)[1:-1] for b, c in zip(bid, cap, strict=True)]
    x0, x1 = np.meshgrid(*xs, indexing="ij")
    feasible = x0 + x1 <= budget
    val = np.log(x0 - bid[0]) + np.log(x1 - bid[1]) + np.log((cap[0] - x0) + (cap[1] - x1))
    val = np.where(feasible, val, -np.inf)
    j = np.unravel_index(np.argmax(val), val.shape)
    return val[j], np.array([x0[j], x1[j]])


@pytest.mark.parametrize(
    ("cap", "bid", "budget"),
    [
        ([1.0, 1.0], [0.0, 0.0], 10.0),  # slack: 2/3 each
        ([1.0, 3.0], [0.5, 0.0], 10.0),  # client 0's cap binds
        ([2.0, 2.0], [0.0, 0.5], 1.5),  # the budget binds
        ([1.0, 4.0], [0.2, 0.1], 2.0),  # both
    ],
)
def test_nbs_coupled_beats_a_brute_force_grid(cap, bid, budget):
    cap, bid = np.array(cap), np.array(bid)
    x = nbs_coupled(cap, bid, budget)
    assert (x >= bid).all() and (x <= cap).all() and x.sum() <= budget + 1e-12
    grid_best, grid_x = _coupled_grid_max(cap, bid, budget)
    assert log_nash_product_coupled(x, cap, bid) >= grid_best - 1e-12
    np.testing.assert_allclose(x, grid_x, atol=2 * (cap - bid).max() / 400)


@settings(max_examples=200, deadline=None)
@given(
    data=st.lists(st.tuples(st.floats(0.01, 5.0), st.floats(0.0, 1.0)), min_size=1, max_size=11),
    budget_frac=st.floats(0.01, 2.0),
)
def test_nbs_coupled_satisfies_kkt(data, budget_frac):
    cap = np.array([c for c, _ in data])
    bid = cap * np.array([f for _, f in data]) * 0.99
    surplus = cap - bid
    budget = bid.sum() + budget_frac * surplus.sum()
    x = nbs_coupled(cap, bid, budget)
    y = x - bid
    leftover = (cap - x).sum()  # L, the server's utility
    assert (y > 0).all() and leftover > 0
    assert x.sum() <= budget * (1 + 1e-12)
    grad = 1.0 / y - 1.0 / leftover  # = lambda + nu_i
    free = y < surplus * (1 - 1e-9)
    lam = grad[free].mean() if free.any() else grad.min()
    assert lam >= -1e-9 * (1.0 / y).max()
    np.testing.assert_allclose(grad[free], lam, rtol=1e-7, atol=1e-9)
    assert (grad[~free] >= lam - 1e-7 * abs(lam) - 1e-9).all()  # nu_i >= 0 at a capped client
    if lam > 1e-7 * (1.0 / y).max():  # complementary slackness: a priced budget is spent
        assert x.sum() == pytest.approx(budget, rel=1e-9)


def test_nbs_coupled_edge_cases():
    np.testing.assert_array_equal(nbs_coupled([1.0, 2.0], [1.0, 2.0], 5.0), [1.0, 2.0])
    np.testing.assert_array_equal(nbs_coupled([1.0, 2.0], [0.5, 1.0], 1.5), [0.5, 1.0])
    x = nbs_coupled([1.0, 2.0], [1.0, 0.0], 10.0)  # the zero-surplus client is left out
    np.testing.assert_allclose(x, [1.0, 1.0])
    with pytest.raises(ValueError, match="no feasible"):
        nbs_coupled([1.0, 2.0], [0.5, 1.0], 1.0)
    with pytest.raises(ValueError, match="not a candidate"):
        nbs_coupled([1.0], [2.0], 10.0)


def test_ape():
    assert ape(0.99, 1.0) == pytest.approx(1.0)
    assert ape(1.01, 1.0) == pytest.approx(1.0)
    np.testing.assert_allclose(ape([0.5, 1.0], [1.0, 1.0]), [50.0, 0.0])
    assert ape_from_log(math.log(0.0504), math.log(0.0625)) == pytest.approx(19.36)
    assert ape_from_log(-1000.0, -1000.0) == 0.0
    with pytest.raises(ValueError):
        ape(1.0, 0.0)


# --- Experiment B ----------------------------------------------------------------------------------


def test_experiment_b_rows_and_determinism():
    rows = run_experiment_b(repetitions=20, seed=3)
    assert [r["clients"] for r in rows] == [2, 5, 8, 11]
    assert rows == run_experiment_b(repetitions=20, seed=3)
    assert rows != run_experiment_b(repetitions=20, seed=4)
    for r in rows:
        assert r["agreed_fraction"] == 1.0
        assert math.isfinite(r["ape_mean"]) and r["ape_std"] >= 0
        assert r["np_bargain_mean"] <= r["np_nbs_mean"]  # the NBS maximises every factor
        assert r["paper_ape"] == PAPER_APE[r["clients"]]
        assert 400 < r["steps_mean"] < 600  # about 250 offers per party


def test_experiment_b_ape_grows_with_clients_and_with_the_spread():
    by_pop = {p: run_experiment_b(repetitions=100, population=p) for p in ("narrow", "default")}
    by_pop["wide"] = run_experiment_b(repetitions=100, population="wide")
    for rows in by_pop.values():
        apes = [r["ape_mean"] for r in rows]
        assert apes == sorted(apes)
    for j in range(4):
        assert (
            by_pop["narrow"][j]["ape_mean"]
            < by_pop["default"][j]["ape_mean"]
            < by_pop["wide"][j]["ape_mean"]
        )


def test_reciprocal_clients_land_on_the_nbs():
    for r in run_experiment_b(repetitions=50, population="wide", strategy="reciprocal"):
        assert r["ape_mean"] < 1e-9


def test_experiment_b_rejects_bad_arguments():
    with pytest.raises(ConfigError, match="incentive.population"):
        run_experiment_b(population="huge")
    with pytest.raises(ConfigError, match="experiment_b.strategy"):
        run_experiment_b(strategy="greedy")
    with pytest.raises(ConfigError, match="incentive.beta_s"):
        run_experiment_b(beta_s=0.0)


def test_format_experiment_b_puts_the_paper_beside_ours():
    rows = run_experiment_b(repetitions=5)
    table = format_experiment_b(
        {"default": rows, "narrow": run_experiment_b(repetitions=5, population="narrow")}
    )
    lines = table.splitlines()
    assert len(lines) == 2 + 4
    assert "paper APE %" in lines[0] and "default APE %" in lines[0] and "narrow" in lines[0]
    for line, paper in zip(lines[2:], ("0.0003", "0.0040", "0.0148", "0.0369"), strict=True):
        assert f"| {paper} |" in line


MEASURED = "default population, 500 repetitions: APE 0.0419, 0.1095, 0.1787, 0.2424 %"


@pytest.mark.xfail(
    strict=True,
    reason=(
        "issue target, not met by the reconstructed mechanism: "
        f"{MEASURED} vs the paper's 0.0003, 0.0040, 0.0148, 0.0369 % "
        "(the spread of Delta_i = beta_i delta_S / delta_i around beta_S sets the APE)"
    ),
)
def test_experiment_b_ape_at_or_below_the_paper_for_the_default_population():
    start = time.perf_counter()
    rows = run_experiment_b(repetitions=500, population="default")
    assert time.perf_counter() - start < 5.0  # vectorised: 4 x 500 bargains in well under 1 s
    for r in rows:
        assert r["ape_mean"] <= PAPER_APE[r["clients"]], (r["clients"], r["ape_mean"])
