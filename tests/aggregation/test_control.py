"""Control rules (adaptive K, remodel, judgement) against hand-made cases."""

from __future__ import annotations

import math

import pytest

from rayfl.aggregation.control import (
    Feedback,
    adaptive_k,
    build_controls,
    decide,
    judgement,
    remodel,
)
from rayfl.errors import ConfigError


def fb(t, loss=1.0, versions=None, acc=None, iterations=100, k=10):
    calls = []

    def evaluate():
        calls.append(t)
        assert acc is not None, "this feedback has no accuracy"
        return acc

    versions = versions or {}

    def older(v):
        return [c for c, cv in versions.items() if cv < v]

    return Feedback(t, iterations, k, loss, older, evaluate), calls


def test_adaptive_k_holds_above_eps_and_decays_below_never_under_k_min():
    rule = adaptive_k(eps_k=0.3, rho=0.5, k_min=2)
    state = rule.init(10)
    d, state = rule.update(fb(0, loss=0.31)[0], state)
    assert d.k == 10 and state.k_real == 10.0  # loss above eps_K: hold
    d, state = rule.update(fb(1, loss=0.30)[0], state)
    assert state.k_real == pytest.approx(10 * math.exp(-0.5))  # 6.065 -> K = 6
    assert d.k == 6
    for t in range(2, 20):
        d, state = rule.update(fb(t, loss=0.1)[0], state)
    assert state.k_real == 2.0 and d.k == 2  # floored at K_min
    d, state = rule.update(fb(20, loss=5.0)[0], state)
    assert d.k == 2  # a high loss holds k; it never grows back


def test_remodel_resends_exactly_the_clients_over_eps_r():
    rule = remodel(eps_r=20)
    # Iteration t = 30 makes version 31: staleness of a job on v would be 31 - v.
    versions = {0: 31, 1: 11, 2: 10, 3: 5, 4: 30}
    d, _ = rule.update(fb(30, versions=versions)[0], rule.init(10))
    assert d.resend == (2, 3)  # 31 - 10 = 21 > 20 and 26 > 20; 31 - 11 = 20 is not over
    assert d.metrics["agg/remodels"] == 2.0


def test_judgement_ewma_and_dev_accuracy_by_hand_then_rejects_a_bad_candidate():
    rule = judgement(
        eps_m=0.01,
        t_min_fraction=0.0,
        theta_0=0.05,
        kappa=0.0,
        delta1=0.5,
        delta2=0.5,
        eval_every=2,
    )
    s = rule.init(10)
    # t = 0: (t+1) % 2 != 0, no evaluation while inactive.
    f, calls = fb(0, acc=0.5)
    d, s = rule.update(f, s)
    assert not calls and not d.keep_previous
    # t = 1: first evaluation: A = 0.8, D = 0.
    d, s = rule.update(fb(1, acc=0.8)[0], s)
    assert (s.ewma, s.dev) == (0.8, 0.0) and s.start is None
    # t = 3: acc 0.9: A = 0.85, D = 0.5 * 0 + 0.5 * 0.05 = 0.025 >= eps_m: still inactive.
    d, s = rule.update(fb(3, acc=0.9)[0], s)
    assert s.ewma == pytest.approx(0.85) and s.dev == pytest.approx(0.025) and s.start is None
    # t = 5: acc 0.85: A = 0.85, D = 0.0125 -> still >= 0.01.
    d, s = rule.update(fb(5, acc=0.85)[0], s)
    assert s.dev == pytest.approx(0.0125) and s.start is None
    # t = 7: acc 0.85: D = 0.00625 < 0.01 -> active from t = 7.
    d, s = rule.update(fb(7, acc=0.85)[0], s)
    assert s.start == 7 and d.metrics["judge/active"] == 1.0
    # Active: evaluated every iteration. A planted bad candidate (0.5 < 0.85 - 0.05) is rejected
    # and the kept model's accuracy (0.85) feeds the EWMA.
    f, calls = fb(8, acc=0.5)
    d, s = rule.update(f, s)
    assert calls == [8] and d.keep_previous and s.maintained == 1
    assert s.ewma == pytest.approx(0.85) and s.current_accuracy == 0.85
    # A good candidate (0.82 >= 0.85 - 0.05) is accepted.
    d, s = rule.update(fb(9, acc=0.82)[0], s)
    assert not d.keep_previous and s.current_accuracy == 0.82 and s.maintained == 1
    assert s.ewma == pytest.approx(0.5 * 0.85 + 0.5 * 0.82)


def test_judgement_tolerance_shrinks_and_waits_for_t_min():
    rule = judgement(eps_m=1.0, t_min_fraction=0.5, theta_0=0.01, kappa=3.0, eval_every=1)
    s = rule.init(10)
    for t in range(0, 49):
        _, s = rule.update(fb(t, acc=0.9)[0], s)
    assert s.start is None  # t < 0.5 * T = 50
    _, s = rule.update(fb(50, acc=0.9)[0], s)
    assert s.start == 50
    d, s = rule.update(fb(100, acc=0.9, iterations=100)[0], s)
    assert d.metrics["judge/tolerance"] == pytest.approx(0.01 * math.exp(-3 * 50 / 100))


def test_decide_merges_decisions_and_build_controls_validates():
    controls = build_controls({"adaptive_k": {"eps_k": 10.0, "rho": 0.1}, "remodel": {"eps_r": 1}})
    states = [c.init(10) for _, c in controls]
    d, _ = decide(controls, states, fb(5, loss=1.0, versions={1: 2, 2: 6})[0])
    assert d.k == 9 and d.resend == (1,) and not d.keep_previous
    with pytest.raises(ConfigError, match="aggregation.control.median"):
        build_controls({"median": {}})
    with pytest.raises(ConfigError, match="aggregation.control.remodel.eps_r"):
        build_controls({"remodel": {"eps_r": -1}})
    with pytest.raises(ConfigError, match="aggregation.control.judgement.delta1"):
        build_controls({"judgement": {"delta1": 1.0}})
    with pytest.raises(ConfigError, match="aggregation.control.adaptive_k"):
        build_controls({"adaptive_k": {"speed": 1}})
