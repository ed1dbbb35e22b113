"""Tests of the aggregation rules (AKAFL-RJ spec section 3) and the recipes built from them.

Hand-computed cases use three clients with small vectors; the expected numbers are written out
(with the arithmetic in a comment), FedJAX style.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from rayfl.aggregation import (
    RECIPES,
    RULES,
    MomentumState,
    Step,
    build_rules,
    chain,
    constant_lr,
    estimate,
    final_direction,
    kasync,
    mean,
    momentum_clip,
    rule_entries,
    similarity_select,
    stage_two_clip,
    staleness_lr,
    staleness_weights,
    start_step,
    weighted_sum,
    wkafl,
)
from rayfl.aggregation.base import Rule
from rayfl.aggregation.rules import clip_by_norm
from rayfl.errors import ConfigError

LR_RULES = {"staleness_lr", "constant_lr"}


def make_step(
    updates,
    staleness=(0, 0, 0),
    *,
    weights=None,
    estimate=None,
    iteration: int = 0,
    lr: float = 0.005,
) -> Step:
    """A Step of three (or K) clients with the given float32 updates."""
    g = np.asarray(updates, dtype=np.float32)
    step = start_step(iteration, g, staleness, np.ones(len(g)), lr)
    if weights is not None:
        step = dataclasses.replace(step, weights=np.asarray(weights, dtype=np.float64))
    if estimate is not None:
        step = dataclasses.replace(step, estimate=np.asarray(estimate, dtype=np.float32))
    return step


def params_of(step: Step) -> np.ndarray:
    """A model w_t of the step's width (the rules here do not read it)."""
    return np.zeros(step.updates.shape[1], np.float32)


def with_previous(state, previous):
    """``state`` with every MomentumState in it set to g_{t-1} = ``previous``."""
    if isinstance(state, MomentumState):
        return MomentumState(np.asarray(previous, np.float32))
    if isinstance(state, tuple) and not hasattr(state, "_fields"):
        return tuple(with_previous(s, previous) for s in state)
    return state


def run(rule, step: Step, previous_direction=None) -> Step:
    state = rule.init(params_of(step))
    if previous_direction is not None:
        state = with_previous(state, previous_direction)
    out, _ = rule.update(step, state, params_of(step))
    return out


# --- hand-computed cases, three clients ----------------------------------------------------------


def test_mean_of_three_vectors():
    # (1 + 3 + 5) / 3 = 3, (2 + 4 + 9) / 3 = 5
    step = make_step([[1, 2], [3, 4], [5, 9]], weights=[0.7, 0.2, 0.1])
    out = run(chain(mean(), weighted_sum()), step)
    np.testing.assert_allclose(out.weights, [1 / 3, 1 / 3, 1 / 3])
    np.testing.assert_allclose(out.direction, [3.0, 5.0], rtol=1e-6)
    assert out.direction.dtype == np.float32


def test_staleness_weights_tau_0_1_2():
    # lam = 1 - ln 2: exp(-lam * tau) = (e/2)^(-tau) = 1, 0.7357589, 0.5413411 (sum 2.2771000)
    # normalised: 0.4391551, 0.3231122, 0.2377327
    out = run(staleness_weights(), make_step([[1, 0], [0, 1], [1, 1]], staleness=[0, 1, 2]))
    np.testing.assert_allclose(out.weights, [0.4391551, 0.3231122, 0.2377327], atol=1e-7)
    tau = np.array([0.0, 1.0, 2.0])
    by_formula = (math.e / 2) ** -tau
    np.testing.assert_allclose(out.weights, by_formula / by_formula.sum(), rtol=1e-12)
    assert out.metrics["agg/max_weight"] == pytest.approx(0.4391551, abs=1e-7)
    assert out.weights.dtype == np.float64


def test_staleness_weights_do_not_overflow_on_huge_staleness():
    # exp(-lam * 1e6) underflows: the stable softmax still gives the fresh update all the weight
    out = run(
        staleness_weights(lam=1.0),
        make_step([[1], [2], [3]], staleness=[10**6, 10**6 + 5, 3 * 10**6]),
    )
    np.testing.assert_allclose(
        out.weights, [1 / (1 + math.exp(-5)), math.exp(-5) / (1 + math.exp(-5)), 0.0]
    )


def test_momentum_clip_with_previous_direction_and_triggered_clip():
    # g_i + 0.1 * [10, 0] = [3, 0], [1, 3], [30, 40]; norms 3, 3.162, 50 > C1 = 5
    # -> the third is clipped to [30, 40] * 5 / 50 = [3, 4]
    step = make_step([[2, 0], [0, 3], [29, 40]])
    out = run(momentum_clip(alpha=0.1, c1=5.0), step, previous_direction=[10, 0])
    np.testing.assert_allclose(out.updates, [[3, 0], [1, 3], [3, 4]], rtol=1e-6)
    assert out.updates.dtype == np.float32


def test_momentum_clip_leaves_its_input_alone_and_clips_in_place_only_what_it_made():
    rng = np.random.default_rng(0)
    g = (rng.standard_normal((6, 50)) * 3).astype(np.float32)
    before = g.copy()
    step = make_step(g)
    out = run(momentum_clip(alpha=0.1, c1=5.0), step, previous_direction=g[0])
    np.testing.assert_array_equal(step.updates, before)  # the step it was given is unchanged
    # the same floats as clipping a copy without the in-place path
    expected = clip_by_norm(before + np.float32(0.1) * before[0][None, :], 5.0)
    assert out.updates.tobytes() == expected.tobytes()
    owned = before + np.float32(0.1) * before[0][None, :]
    assert clip_by_norm(owned, 5.0, owned=True) is owned


@pytest.mark.parametrize("previous", [True, False])
def test_momentum_clip_writes_into_a_writable_stack_with_the_same_floats(previous):
    # The K-async server marks its fresh stack of updates writable: momentum_clip adds g_{t-1}
    # into it and clips it in place, and must give the bytes of the copying path.
    rng = np.random.default_rng(1)
    g = (rng.standard_normal((6, 50)) * 3).astype(np.float32)
    prev = g[1].copy() if previous else None
    copying = run(momentum_clip(alpha=0.1, c1=5.0), make_step(g.copy()), previous_direction=prev)
    stack = g.copy()
    step = dataclasses.replace(make_step(stack), updates_writable=True)
    writing = run(momentum_clip(alpha=0.1, c1=5.0), step, previous_direction=prev)
    assert writing.updates is stack  # written in place, no (K, P) copy
    assert writing.updates.tobytes() == copying.updates.tobytes()


def test_only_the_chains_first_rule_may_write_into_the_stack():
    seen = []

    def spy(step, state, params):
        seen.append(step.updates_writable)
        return step, state

    spy_rule = Rule(lambda params: None, spy)
    step = dataclasses.replace(make_step(np.ones((3, 4), np.float32)), updates_writable=True)
    out, _ = chain(spy_rule, spy_rule, spy_rule).update(step, (None, None, None), np.zeros(4))
    assert seen == [True, False, False]
    assert out.updates_writable is False


def test_momentum_clip_without_previous_direction_only_clips():
    # t = 0: g_{t-1} = 0, so [6, 8] (norm 10) -> [3, 4] with C1 = 5; the others are short
    out = run(momentum_clip(alpha=0.1, c1=5.0), make_step([[2, 0], [0, 3], [6, 8]]))
    np.testing.assert_allclose(out.updates, [[2, 0], [0, 3], [3, 4]], rtol=1e-6)


def test_estimate_uses_current_weights():
    # 0.5 * [2, 0] + 0.3 * [0, 10] + 0.2 * [5, 5] = [2, 4]
    out = run(estimate(), make_step([[2, 0], [0, 10], [5, 5]], weights=[0.5, 0.3, 0.2]))
    np.testing.assert_allclose(out.estimate, [2.0, 4.0], rtol=1e-6)
    assert out.estimate.dtype == np.float32
    assert out.direction is None


def test_similarity_select_excludes_negative_cosine():
    # g_est = [1, 0]: c = cos([2,0]) = 1, cos([3,4]) = 0.6, cos([-3,4]) = -0.6 -> S = {0, 1}
    # beta = 1: p ~ e^1 * 0.5 = 1.3591409, e^0.6 * 0.3 = 0.5466356, 0 -> 0.7131691, 0.2868309, 0
    step = make_step([[2, 0], [3, 4], [-3, 4]], weights=[0.5, 0.3, 0.2], estimate=[1, 0])
    out = run(similarity_select(c_min=0.3, beta=1.0), step)
    np.testing.assert_allclose(out.weights, [0.7131691, 0.2868309, 0.0], atol=1e-7)
    assert out.metrics["agg/selected"] == 2
    assert out.metrics["agg/similarity_mean"] == pytest.approx((1 + 0.6 - 0.6) / 3)
    # g_t = 0.7131691 * [2, 0] + 0.2868309 * [3, 4] = [2.2868309, 1.1473236]
    np.testing.assert_allclose(
        run(weighted_sum(), out).direction, [2.2868309, 1.1473236], rtol=1e-6
    )


def test_similarity_select_all_excluded_gives_the_estimate():
    # uniform weights: g_est = mean([2,0], [0,2], [1,-1]) = [1, 1/3]
    # c = 0.9486833, 0.3162278, 0.4472136, all below c_min = 0.95 -> weights unchanged, g_t = g_est
    step = make_step([[2, 0], [0, 2], [1, -1]])
    out = run(chain(estimate(), similarity_select(c_min=0.95), weighted_sum()), step)
    np.testing.assert_allclose(out.weights, [1 / 3, 1 / 3, 1 / 3])
    np.testing.assert_allclose(out.direction, [1.0, 1 / 3], rtol=1e-6)
    np.testing.assert_array_equal(out.direction, out.estimate)
    assert out.metrics["agg/selected"] == 0
    assert out.metrics["agg/similarity_mean"] == pytest.approx(
        (0.9486833 + 0.3162278 + 0.4472136) / 3, abs=1e-7
    )


def test_similarity_select_computes_missing_estimate_and_handles_zero_norms():
    # no estimate rule ran: g_est = mean([3,0], [0,0], [0,0]) = [1, 0]; zero updates get c = 0
    out = run(similarity_select(c_min=0.5), make_step([[3, 0], [0, 0], [0, 0]]))
    np.testing.assert_allclose(out.estimate, [1.0, 0.0])
    np.testing.assert_allclose(out.weights, [1.0, 0.0, 0.0])
    assert out.metrics["agg/similarity_mean"] == pytest.approx(1 / 3)
    # a zero estimate: every cosine is 0, nobody reaches 0.3, weights stay uniform
    out = run(similarity_select(), make_step([[1, 0], [-1, 0], [0, 0]]))
    np.testing.assert_allclose(out.weights, [1 / 3, 1 / 3, 1 / 3])
    assert out.metrics["agg/selected"] == 0


def test_similarity_select_is_stable_for_large_beta():
    # c = 1, 0.6, -0.6 with beta = 1000: exp(1000) would overflow without the shift;
    # shifted: p ~ 0.5, e^-400 * 0.3, e^-1600 * 0.2 (underflows to 0) -> 1, 0.6 e^-400, 0
    step = make_step([[2, 0], [3, 4], [-3, 4]], weights=[0.5, 0.3, 0.2], estimate=[1, 0])
    out = run(similarity_select(c_min=-1.0, beta=1000.0), step)
    np.testing.assert_allclose(out.weights, [1.0, 0.6 * math.exp(-400), 0.0], rtol=1e-9)
    assert out.metrics["agg/selected"] == 3


@pytest.mark.parametrize(
    ("iteration", "expected"),
    [
        (4, [[1, 0], [0, 3], [3, 4]]),  # before t2 = 5: identity
        (
            5,
            [[1, 0], [0, 2], [1.2, 1.6]],
        ),  # bound C2 * ||g_est|| = 2 * 1: [0,3] -> [0,2], [3,4] -> [1.2,1.6]
        (6, [[1, 0], [0, 2], [1.2, 1.6]]),
    ],
)
def test_stage_two_clip_before_and_after_t2(iteration, expected):
    step = make_step([[1, 0], [0, 3], [3, 4]], estimate=[0, 1], iteration=iteration)
    out = run(stage_two_clip(c2=2.0, t2=5), step)
    np.testing.assert_allclose(out.updates, expected, rtol=1e-6)


def test_stage_two_clip_bound_uses_the_real_estimate_norm():
    # no estimate set: g_est = mean([3,0], [0,3], [0,0]) = [1, 1], ||g_est|| = sqrt(2)
    # bound = 1 * sqrt(2): [3,0] -> [sqrt(2), 0], [0,3] -> [0, sqrt(2)]
    out = run(stage_two_clip(c2=1.0, t2=0), make_step([[3, 0], [0, 3], [0, 0]]))
    r2 = math.sqrt(2)
    np.testing.assert_allclose(out.updates, [[r2, 0], [0, r2], [0, 0]], rtol=1e-6)
    np.testing.assert_allclose(out.estimate, [1.0, 1.0])


@pytest.mark.parametrize(
    ("form", "staleness", "expected"),
    [
        ("inverse", [3, 5, 7], 0.005 / 1.3),  # 0.005 / (1 + 0.1 * 3) = 0.0038461538
        ("power", [3, 5, 7], 0.004479792299),  # 0.005 * 3^-0.1 = 0.005 * 0.8959585
        ("inverse", [0, 5, 7], 0.005),  # tau_min = 0: 0.005 / 1
        ("power", [0, 5, 7], 0.005),  # max(0, 1)^-0.1 = 1: the guard against 0^-gamma
    ],
)
def test_staleness_lr(form, staleness, expected):
    out = run(staleness_lr(gamma=0.1, form=form), make_step([[1], [2], [3]], staleness=staleness))
    assert out.lr == pytest.approx(expected, rel=1e-9)
    assert out.metrics["agg/lr"] == pytest.approx(expected, rel=1e-9)


def test_constant_lr_records_the_base_rate():
    out = run(constant_lr(), make_step([[1], [2], [3]], staleness=[4, 5, 6], lr=0.02))
    assert out.lr == 0.02
    assert out.metrics["agg/lr"] == 0.02


# --- recipes -------------------------------------------------------------------------------------


def wkafl_step(iteration: int) -> Step:
    # after momentum (+ 0.1 * [10, 0]): [3, 4], [4, 3], [-6, -8]; C1 = 5 clips the last to [-3, -4]
    return make_step(
        [[2, 4], [3, 3], [-7, -8]],
        staleness=[1, 2, 3],
        iteration=iteration,
        lr=0.005,
    )


@pytest.mark.parametrize(
    ("t2", "c2", "expected_direction"),
    [
        # stage one (t = 5 < t2): g_t = 0.5530901 * [3, 4] + 0.4469099 * [4, 3]
        (1000, 10.0, [3.4469099, 3.5530901]),
        # stage two with C2 = 1: both selected updates (norm 5) clipped to ||g_est|| = 2.5977393
        (0, 1.0, [1.7908347, 1.8460004]),
    ],
)
def test_wkafl_recipe_on_three_clients(t2, c2, expected_direction):
    # tau = 1, 2, 3: s = (e/2)^-tau normalised = 0.4391551, 0.3231122, 0.2377327
    # g_est = s @ [[3,4],[4,3],[-3,-4]] = [1.8967160, 1.7750262], norm 2.5977393
    # c = 0.9847218, 0.9940907, -0.9847218 -> S = {0, 1}
    # p ~ exp(10 c) s: p0 / p1 = exp(-0.0936893) * e/2 = 1.2375857 -> p = 0.5530901, 0.4469099, 0
    # eta_t = 0.005 / (1 + 0.1 * tau_min) = 0.005 / 1.1
    rule = build_rules(wkafl(c1=5.0, c2=c2, t2=t2))
    out = run(rule, wkafl_step(iteration=5), previous_direction=[10, 0])
    np.testing.assert_allclose(
        out.weights, [0.5530901, 0.4469099, 0.0], atol=1e-6
    )  # float32 cosines
    np.testing.assert_allclose(out.estimate, [1.8967160, 1.7750262], rtol=1e-6)
    np.testing.assert_allclose(final_direction(out), expected_direction, rtol=1e-6)
    assert out.lr == pytest.approx(0.005 / 1.1)
    assert out.metrics["agg/lr"] == pytest.approx(0.005 / 1.1)
    assert out.metrics["agg/selected"] == 2
    assert out.metrics["agg/max_weight"] == pytest.approx(0.4391551, abs=1e-7)
    assert out.metrics["agg/similarity_mean"] == pytest.approx(0.3313636, abs=1e-7)
    # the server's step: w_{t+1} = w_t - eta_t * g_t
    w_t = np.array([1.0, 1.0], np.float32)
    w_next = w_t - out.lr * final_direction(out)
    np.testing.assert_allclose(w_next, 1.0 - 0.005 / 1.1 * np.array(expected_direction), rtol=1e-6)


def test_kasync_recipe_on_three_clients():
    step = make_step([[1, 2], [3, 4], [5, 9]], staleness=[0, 4, 9], lr=0.01)
    out = run(build_rules(kasync()), step)
    np.testing.assert_allclose(out.direction, [3.0, 5.0], rtol=1e-6)
    assert out.lr == 0.01
    assert out.metrics["agg/lr"] == 0.01


def test_wkafl_recipe_has_the_spec_defaults():
    assert wkafl() == [
        {"momentum_clip": {"alpha": 0.1, "c1": 100.0}},
        {"staleness_weights": {"lam": 1 - math.log(2)}},
        {"estimate": {}},
        {"similarity_select": {"c_min": 0.3, "beta": 10.0}},
        {"stage_two_clip": {"c2": 10.0, "t2": 1000}},
        {"weighted_sum": {}},
        {"staleness_lr": {"gamma": 0.1, "form": "inverse"}},
    ]


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_ends_with_exactly_one_lr_rule(name):
    spec = RECIPES[name]()
    names = [name for name, _ in rule_entries(spec)]
    assert names[-1] in LR_RULES
    assert sum(n in LR_RULES for n in names) == 1
    out = run(build_rules(spec), make_step([[1, 2], [3, 4], [5, 9]], staleness=[0, 1, 2]))
    assert "agg/lr" in out.metrics
    assert RECIPES[name]() is not spec  # a fresh list each call: presets may edit it


def test_build_rules_chains_in_list_order():
    step = make_step([[3, 0], [0, 3], [0, 0]], staleness=[0, 1, 2])
    weighted = run(build_rules(["staleness_weights", "weighted_sum"]), step)
    uniform = run(build_rules(["mean", "weighted_sum"]), step)
    # s = 0.4391551, 0.3231122, 0.2377327 -> [1.3174652, 0.9693367]; uniform -> [1, 1]
    np.testing.assert_allclose(weighted.direction, [1.3174652, 0.9693367], rtol=1e-6)
    np.testing.assert_allclose(uniform.direction, [1.0, 1.0], rtol=1e-6)


def test_build_rules_reads_the_mapping_form_of_earlier_versions():
    step = make_step([[3, 0], [0, 3], [0, 0]], staleness=[0, 1, 2])
    old = run(build_rules({"staleness_weights": None, "weighted_sum": {}}), step)
    new = run(build_rules([{"staleness_weights": None}, "weighted_sum"]), step)
    np.testing.assert_array_equal(old.direction, new.direction)


def test_a_rule_may_repeat():
    # clip to 5, then to 2: the second clip acts on the first one's output
    once = run(build_rules([{"momentum_clip": {"alpha": 0, "c1": 2}}]), make_step([[6, 8]] * 3))
    twice = run(
        build_rules(
            [{"momentum_clip": {"alpha": 0, "c1": 5}}, {"momentum_clip": {"alpha": 0, "c1": 2}}]
        ),
        make_step([[6, 8]] * 3),
    )
    np.testing.assert_allclose(twice.updates, once.updates, rtol=1e-6)
    np.testing.assert_allclose(twice.direction, [1.2, 1.6], rtol=1e-6)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            ["weighted_sum", "staleness_weights"],
            r"rules\[1\] staleness_weights \(stage updates\) comes after",
        ),
        (["constant_lr", "mean"], r"rules\[1\] mean \(stage updates\) comes after .*constant_lr"),
        (["weighted_sum", "weighted_sum"], r"rules\[1\] weighted_sum is a second aggregate rule"),
        (["constant_lr", "staleness_lr"], r"rules\[1\] staleness_lr is a second lr rule"),
    ],
)
def test_stage_order_is_checked(spec, message):
    with pytest.raises(ConfigError, match=message) as info:
        build_rules(spec)
    assert "\n" not in str(info.value)


# --- contract: every registered rule -------------------------------------------------------------


def random_step(seed: int, iteration: int, name: str = "") -> Step:
    """A step for any shipped rule: the engines' context (N, the seed, SCAFFOLD's reports) and,
    for ``dp_noise``, what it requires of the rules before it (clipped updates, weights 1/K)."""
    rng = np.random.default_rng([seed, iteration])
    k, p = 5, 7
    updates = rng.normal(size=(k, p)).astype(np.float32)
    updates[0] *= 500.0  # one large update so that the clips trigger
    if name == "dp_noise":  # dp_clip's output: norms <= clip_norm (1)
        updates /= np.maximum(1.0, np.linalg.norm(updates, axis=1, keepdims=True) * 1.001)
    staleness = rng.integers(0, 30, size=k)
    prev = rng.normal(size=p).astype(np.float32)
    delta_c = rng.normal(size=(k, p)).astype(np.float32)
    return start_step(
        iteration,
        updates,
        staleness,
        rng.uniform(0, 3, size=k),
        0.005,
        prev,
        reports={"delta_c": delta_c},
        seed=seed,
        num_clients=50,
    )


def frozen_copy(step: Step) -> Step:
    """A deep copy whose arrays are read-only, so that any in-place write raises."""
    fields = {}
    for f in dataclasses.fields(step):
        value = getattr(step, f.name)
        if isinstance(value, np.ndarray):
            value = value.copy()
            value.setflags(write=False)
        elif isinstance(value, dict):
            value = dict(value)
        fields[f.name] = value
    return Step(**fields)


def assert_steps_equal(a: Step, b: Step) -> None:
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if f.name == "reports":
            assert sorted(x) == sorted(y)
            for key in x:
                np.testing.assert_array_equal(x[key], y[key], err_msg=key)
        elif isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            np.testing.assert_array_equal(x, y, err_msg=f.name)
        else:
            assert x == y, f.name


@pytest.mark.parametrize("iteration", [0, 2000])  # 2000 >= the default t2: stage two is active
@pytest.mark.parametrize("name", sorted(RULES))
def test_rule_contract(name, iteration):
    rule = RULES[name]()
    step = random_step(seed=7, iteration=iteration, name=name)
    frozen = frozen_copy(step)

    state = rule.init(params_of(step))
    out, new_state = rule.update(frozen, state, params_of(step))
    assert type(new_state) is type(state)

    # the input is untouched (read-only arrays would have raised on a write)
    assert_steps_equal(frozen, step)

    # finite output with the documented dtypes and shapes
    assert out.updates.shape == (5, 7) and out.updates.dtype == np.float32
    assert np.isfinite(out.updates).all()
    assert out.weights.shape == (5,) and out.weights.dtype == np.float64
    assert np.isfinite(out.weights).all() and (out.weights >= 0).all()
    assert out.weights.sum() == pytest.approx(1.0, abs=1e-12)
    for vector in (out.estimate, out.direction):
        if vector is not None:
            assert vector.shape == (7,) and vector.dtype == np.float32
            assert np.isfinite(vector).all()
    assert np.isfinite(final_direction(out)).all()
    assert math.isfinite(out.lr) and 0 < out.lr <= 0.005
    assert all(math.isfinite(v) for v in out.metrics.values())
    assert set(step.metrics) <= set(out.metrics)

    # the same input gives the same output
    again, _ = rule.update(frozen_copy(step), rule.init(params_of(step)), params_of(step))
    assert_steps_equal(again, out)


@pytest.mark.parametrize("name", sorted(RULES))
def test_rule_is_picked_by_build_rules(name):
    out = run(build_rules([{name: None}]), random_step(seed=3, iteration=2000, name=name))
    expected = run(RULES[name](), random_step(seed=3, iteration=2000, name=name))
    # the chain ends by setting g_t (the weighted sum if no rule did), for commits and the optimizer
    expected = dataclasses.replace(expected, direction=final_direction(expected))
    assert_steps_equal(out, expected)


# --- properties ----------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    tau=st.lists(st.integers(0, 100_000), min_size=1, max_size=20),
    lam=st.floats(0.0, 10.0),
)
def test_staleness_weights_sum_to_one_and_never_grow_with_staleness(tau, lam):
    k = len(tau)
    out = run(staleness_weights(lam=lam), make_step(np.zeros((k, 2)), staleness=tau))
    s = out.weights
    assert np.isfinite(s).all()
    assert s.sum() == pytest.approx(1.0, abs=1e-12)
    order = np.argsort(tau, kind="stable")
    assert (np.diff(s[order]) <= 1e-15).all()  # sorted by staleness, weights do not increase


@settings(max_examples=200, deadline=None)
@given(
    updates=hnp.arrays(
        np.float32,
        st.tuples(st.integers(1, 8), st.integers(1, 6)),
        elements=st.floats(-100, 100, width=32),
    ),
    seed=st.integers(0, 2**16),
    c_min=st.floats(-1.0, 1.0),
    beta=st.floats(0.0, 100.0),
)
def test_similarity_weights_are_a_distribution(updates, seed, c_min, beta):
    k = updates.shape[0]
    tau = np.random.default_rng(seed).integers(0, 50, size=k)
    rule = chain(staleness_weights(), estimate(), similarity_select(c_min=c_min, beta=beta))
    out = run(rule, make_step(updates, staleness=tau))
    assert np.isfinite(out.weights).all()
    assert (out.weights >= 0).all()
    assert out.weights.sum() == pytest.approx(1.0, abs=1e-9)
    assert 0 <= out.metrics["agg/selected"] <= k


@settings(max_examples=200, deadline=None)
@given(
    updates=hnp.arrays(
        np.float32,
        st.tuples(st.integers(1, 6), st.integers(1, 6)),
        elements=st.floats(-1e4, 1e4, width=32),
    ),
    c=st.floats(1e-3, 1e3),
)
def test_clip_output_norm_is_at_most_c(updates, c):
    out = clip_by_norm(updates, c)
    norms = np.linalg.norm(out.astype(np.float64), axis=1)
    assert (norms <= c * (1 + 1e-6)).all()
    short = np.linalg.norm(updates.astype(np.float64), axis=1) <= c
    np.testing.assert_array_equal(out[short], updates[short])  # short rows pass unchanged
    clipped = run(momentum_clip(alpha=0.0, c1=c), make_step(updates)).updates
    assert (np.linalg.norm(clipped.astype(np.float64), axis=1) <= c * (1 + 1e-6)).all()


# --- build_rules errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "path"),
    [
        ({"fedprox": {}}, "aggregation.rules[0]='fedprox'"),
        ({"momentum_clip": {"beta": 1.0}}, "aggregation.rules.momentum_clip.beta"),
        ({"momentum_clip": {"c1": "big"}}, "aggregation.rules.momentum_clip.c1"),
        ({"staleness_lr": {"gamma": True}}, "aggregation.rules.staleness_lr.gamma"),
        ({"staleness_lr": {"form": 2}}, "aggregation.rules.staleness_lr.form"),
        ({"staleness_lr": {"form": "exp"}}, "aggregation.rules.staleness_lr.form"),
        ({"stage_two_clip": {"t2": 10.5}}, "aggregation.rules.stage_two_clip.t2"),
        ({"stage_two_clip": {"t2": -1}}, "aggregation.rules.stage_two_clip.t2"),
        ({"similarity_select": {"c_min": 2}}, "aggregation.rules.similarity_select.c_min"),
        ({"momentum_clip": {"c1": 0}}, "aggregation.rules.momentum_clip.c1"),
        ({"staleness_weights": {"lam": -0.5}}, "aggregation.rules.staleness_weights.lam"),
        ({"staleness_weights": {"lam": float("nan")}}, "aggregation.rules.staleness_weights.lam"),
        ({"mean": {"k": 3}}, "aggregation.rules.mean.k"),
        ({"mean": [1]}, "aggregation.rules.mean"),
    ],
)
def test_build_rules_errors_name_the_path(spec, path):
    with pytest.raises(ConfigError) as info:
        build_rules(spec)
    message = str(info.value)
    assert path in message
    assert "\n" not in message


def test_build_rules_unknown_rule_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"aggregation.rules\[1\]='fedprox'") as info:
        build_rules(["mean", "fedprox"])
    for name in RULES:
        assert name in str(info.value)


def test_build_rules_rejects_empty_and_malformed_specs():
    for spec in ({}, [], "mean", 3, [{"mean": {}, "weighted_sum": {}}], [3]):
        with pytest.raises(ConfigError, match="aggregation.rules"):
            build_rules(spec)


def test_build_rules_accepts_int_for_float_params():
    rule = build_rules({"momentum_clip": {"alpha": 0, "c1": 5}})
    out = run(rule, make_step([[2, 0], [0, 3], [6, 8]]))
    np.testing.assert_allclose(out.updates, [[2, 0], [0, 3], [3, 4]], rtol=1e-6)


def test_factories_validate_direct_calls():
    with pytest.raises(ConfigError, match=r"aggregation\.rules\.momentum_clip\.c1"):
        momentum_clip(c1=-1.0)
    with pytest.raises(ConfigError, match=r"aggregation\.rules\.similarity_select\.beta"):
        similarity_select(beta=-1.0)
    with pytest.raises(ConfigError, match=r"aggregation\.rules\.stage_two_clip\.c2"):
        stage_two_clip(c2=0.0)
    with pytest.raises(ConfigError, match=r"aggregation\.rules\.momentum_clip\.alpha"):
        momentum_clip(alpha=-0.1)
    assert mean().init(np.zeros(2, np.float32)) == ()
