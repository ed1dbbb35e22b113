"""Tests of the server optimizers: FedAvgM, FedAdagrad, FedAdam, FedYogi (Reddi et al. 2021) and
FedAsync's mixing (Xie et al. 2019).

Each optimizer takes one or two steps from w_0 = [1, 2, 3] (P = 3); the expected models are worked
out by hand and written as literals, with the arithmetic in a comment. g_t is the descent
direction the chain hands over, so Reddi et al.'s Delta_t is -g_t.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from rayfl.aggregation.base import ServerOptimizer, start_step
from rayfl.aggregation.build import build_optimizer
from rayfl.aggregation.optimizers import OPTIMIZERS
from rayfl.errors import ConfigError, RayflError
from rayfl.runtime import safestate

W0 = (1.0, 2.0, 3.0)


def vec(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)


def make_step(direction=(0.0, 0.0, 0.0), lr=0.5, staleness=(0,), local_models=None):
    """The chain's final Step: g_t = ``direction``, eta = ``lr``, one row per staleness."""
    k = len(staleness)
    step = start_step(0, np.zeros((k, 3), np.float32), staleness, np.ones(k), lr)
    return dataclasses.replace(step, direction=vec(direction), local_models=local_models)


def run(optimizer: ServerOptimizer, directions, lr=0.5) -> list[np.ndarray]:
    """The models w_1, w_2, ... the optimizer makes from W0 along ``directions``."""
    w = vec(W0)
    state = optimizer.init(w)
    models = []
    for g in directions:
        w, state = optimizer.apply(make_step(g, lr), state, w)
        assert w.dtype == np.float32 and w.shape == (3,)
        models.append(w)
    return models


def close(actual, expected) -> None:
    np.testing.assert_allclose(actual, np.asarray(expected, np.float64), rtol=1e-6)


# --- hand-computed steps -------------------------------------------------------------------------


def test_fedavgm_accumulates_momentum():
    w1, w2 = run(OPTIMIZERS["fedavgm"](momentum=0.9), [(1, -2, 0), (2, 0, -1)], lr=0.5)
    # m_1 = g_1 = [1, -2, 0];  w_1 = [1, 2, 3] - 0.5 * [1, -2, 0] = [0.5, 3, 3]
    close(w1, [0.5, 3.0, 3.0])
    # m_2 = 0.9 * [1, -2, 0] + [2, 0, -1] = [2.9, -1.8, -1]
    # w_2 = [0.5, 3, 3] - 0.5 * [2.9, -1.8, -1] = [-0.95, 3.9, 3.5]
    close(w2, [-0.95, 3.9, 3.5])


def test_fedavgm_nesterov_looks_ahead():
    opt = OPTIMIZERS["fedavgm"](momentum=0.9, nesterov=True)
    w1, w2 = run(opt, [(1, -2, 0), (2, 0, -1)], lr=0.1)
    # m_1 = [1, -2, 0];  g_1 + 0.9 * m_1 = [1.9, -3.8, 0]
    # w_1 = [1, 2, 3] - 0.1 * [1.9, -3.8, 0] = [0.81, 2.38, 3]
    close(w1, [0.81, 2.38, 3.0])
    # m_2 = [2.9, -1.8, -1];  g_2 + 0.9 * m_2 = [2 + 2.61, -1.62, -1 - 0.9] = [4.61, -1.62, -1.9]
    # w_2 = [0.81, 2.38, 3] - 0.1 * [4.61, -1.62, -1.9] = [0.349, 2.542, 3.19]
    close(w2, [0.349, 2.542, 3.19])


def test_fedadagrad_divides_by_the_accumulated_squares():
    opt = OPTIMIZERS["fedadagrad"](beta1=0.9, tau=0.3)
    w1, w2 = run(opt, [(0.4, -0.4, 0), (1.2, 0, -0.4)], lr=0.5)
    # Delta_1 = [-0.4, 0.4, 0];  m_1 = 0.1 * Delta_1 = [-0.04, 0.04, 0]
    # v_1 = tau^2 + Delta_1^2 = 0.09 + [0.16, 0.16, 0] = [0.25, 0.25, 0.09]
    # sqrt(v_1) + tau = [0.5, 0.5, 0.3] + 0.3 = [0.8, 0.8, 0.6]
    # w_1 = [1, 2, 3] + 0.5 * [-0.04 / 0.8, 0.04 / 0.8, 0] = [0.975, 2.025, 3]
    close(w1, [0.975, 2.025, 3.0])
    # Delta_2 = [-1.2, 0, 0.4];  m_2 = 0.9 * m_1 + 0.1 * Delta_2 = [-0.156, 0.036, 0.04]
    # v_2 = [0.25 + 1.44, 0.25 + 0, 0.09 + 0.16] = [1.69, 0.25, 0.25];  sqrt + tau = [1.6, 0.8, 0.8]
    # w_2 = w_1 + 0.5 * [-0.156 / 1.6, 0.036 / 0.8, 0.04 / 0.8] = w_1 + [-0.04875, 0.0225, 0.025]
    close(w2, [0.92625, 2.0475, 3.025])


def test_fedadam_averages_the_squares_without_bias_correction():
    opt = OPTIMIZERS["fedadam"](beta1=0.9, beta2=0.99, tau=0.1)
    w1, w2 = run(opt, [(1, -2, 0), (0.5, 0.5, -1)], lr=0.5)
    # Delta_1 = [-1, 2, 0];  m_1 = 0.1 * Delta_1 = [-0.1, 0.2, 0]
    # v_1 = 0.99 * 0.01 + 0.01 * [1, 4, 0] = [0.0199, 0.0499, 0.0099]
    # sqrt(v_1) = [0.1410673598, 0.2233830790, 0.0994987437]
    # w_1 = [1 - 0.05 / 0.2410673598, 2 + 0.1 / 0.3233830790, 3]
    close(w1, [0.7925890919, 2.3092307745, 3.0])
    # Delta_2 = [-0.5, -0.5, 1];  m_2 = 0.9 * m_1 + 0.1 * Delta_2 = [-0.14, 0.13, 0.1]
    # v_2 = 0.99 * v_1 + 0.01 * [0.25, 0.25, 1] = [0.022201, 0.051901, 0.019801]
    # sqrt(v_2) = [0.149, 0.2278179097, 0.1407160261]
    # w_2 = w_1 + 0.5 * [-0.14 / 0.249, 0.13 / 0.3278179097, 0.1 / 0.2407160261]
    #     = w_1 + [-0.2811244980, 0.1982838079, 0.2077136317]
    close(w2, [0.5114645939, 2.5075115825, 3.2077136317])


def test_fedyogi_moves_v_by_an_additive_step_towards_delta_squared():
    opt = OPTIMIZERS["fedyogi"](beta1=0.9, beta2=0.99, tau=0.1)
    w1, w2 = run(opt, [(1, -2, 0.05), (0.1, 0, 0)], lr=0.5)
    # Delta_1 = [-1, 2, -0.05], Delta_1^2 = [1, 4, 0.0025];  m_1 = [-0.1, 0.2, -0.005]
    # v_0 = 0.01: sign(v_0 - Delta_1^2) = [-1, -1, +1]
    # v_1 = 0.01 + 0.01 * [1, 4, -0.0025] = [0.02, 0.05, 0.009975]  (Adam's would be 0.009925)
    # sqrt(v_1) = [0.1414213562, 0.2236067977, 0.0998749218]
    # w_1 = [1 - 0.05 / 0.2414213562, 2 + 0.1 / 0.3236067977, 3 - 0.0025 / 0.1998749218]
    close(w1, [0.7928932188, 2.3090169944, 2.9874921777])
    # Delta_2 = [-0.1, 0, 0], Delta_2^2 = [0.01, 0, 0];  m_2 = 0.9 * m_1 + 0.1 * Delta_2
    #     = [-0.1, 0.18, -0.0045]
    # sign(v_1 - Delta_2^2) = [+1, +1, +1]: v_2 = v_1 - 0.01 * [0.01, 0, 0] = [0.0199, 0.05, 0.009975]
    # w_2 = w_1 + 0.5 * [-0.1 / 0.2410673598, 0.18 / 0.3236067977, -0.0045 / 0.1998749218]
    #     = w_1 + [-0.2074109081, 0.2781152949, -0.0112570401]
    close(w2, [0.5854823107, 2.5871322893, 2.9762351377])


def local(*rows):
    return lambda: np.asarray(rows, dtype=np.float32)


def test_fedasync_polynomial_mixes_in_the_local_model():
    opt = OPTIMIZERS["fedasync"](alpha=0.6, staleness="polynomial", a=0.5)
    step = make_step(staleness=(3,), local_models=local((3, 2, -1)))
    w1, _ = opt.apply(step, opt.init(vec(W0)), vec(W0))
    # alpha_t = 0.6 * (3 + 1)^(-0.5) = 0.3
    # w_1 = 0.7 * [1, 2, 3] + 0.3 * [3, 2, -1] = [0.7 + 0.9, 1.4 + 0.6, 2.1 - 0.3]
    close(w1, [1.6, 2.0, 1.8])


def test_fedasync_constant_ignores_staleness_and_the_server_lr():
    opt = OPTIMIZERS["fedasync"](alpha=0.6, staleness="constant")
    step = make_step(lr=123.0, staleness=(10,), local_models=local((6, 2, -2)))
    w1, _ = opt.apply(step, opt.init(vec(W0)), vec(W0))
    # alpha_t = 0.6:  w_1 = 0.4 * [1, 2, 3] + 0.6 * [6, 2, -2] = [0.4 + 3.6, 0.8 + 1.2, 1.2 - 1.2]
    close(w1, [4.0, 2.0, 0.0])


def test_fedasync_hinge_mixes_several_updates_in_arrival_order():
    opt = OPTIMIZERS["fedasync"](alpha=0.5, staleness="hinge", a=0.5, b=2)
    step = make_step(staleness=(4, 1), local_models=local((5, 2, -1), (0, 4, 2)))
    w1, _ = opt.apply(step, opt.init(vec(W0)), vec(W0))
    # row 0, d = 4 > b: s = 1 / (0.5 * (4 - 2) + 1) = 0.5, alpha_t = 0.25
    #     w' = 0.75 * [1, 2, 3] + 0.25 * [5, 2, -1] = [2, 2, 2]
    # row 1, d = 1 <= b: s = 1, alpha_t = 0.5:  w_1 = 0.5 * [2, 2, 2] + 0.5 * [0, 4, 2]
    close(w1, [1.0, 3.0, 2.0])


def test_fedasync_needs_the_engines_local_models():
    opt = OPTIMIZERS["fedasync"]()
    with pytest.raises(RayflError, match="cannot give"):
        opt.apply(make_step(), opt.init(vec(W0)), vec(W0))
    wrong = make_step(staleness=(0, 0), local_models=local((1, 2, 3)))
    with pytest.raises(RayflError, match=r"shape \(1, 3\), not \(2, 3\)"):
        opt.apply(wrong, opt.init(vec(W0)), vec(W0))


# --- contract ------------------------------------------------------------------------------------

NEW = ("fedavgm", "fedadagrad", "fedadam", "fedyogi", "fedasync")


def one_step(name: str, optimizer: ServerOptimizer, state, w, g):
    """One apply with a Step the optimizer can use (fedasync gets a local model)."""
    models = local(np.asarray(w) - np.asarray(g)) if name == "fedasync" else None
    return optimizer.apply(make_step(g, 0.5, (2,), models), state, w)


@pytest.mark.parametrize("name", NEW)
def test_every_new_optimizer_is_registered_and_builds_with_its_defaults(name):
    assert name in OPTIMIZERS
    opt = build_optimizer(name)
    w, _ = one_step(name, opt, opt.init(vec(W0)), vec(W0), vec((1, -2, 0)))
    assert w.dtype == np.float32 and np.isfinite(w).all() and not np.array_equal(w, vec(W0))


@pytest.mark.parametrize("name", NEW)
def test_apply_leaves_its_inputs_alone(name):
    opt = OPTIMIZERS[name]()
    w, g = vec(W0), vec((1, -2, 0.5))
    _, state = one_step(name, opt, opt.init(w), w, g)
    before = [np.copy(a) for a in (w, g, *state)]
    one_step(name, opt, state, w, g)
    for was, now in zip(before, (w, g, *state), strict=True):
        assert np.array_equal(was, now)


@pytest.mark.parametrize("name", NEW)
def test_states_survive_a_checkpoint_round_trip(name):
    opt = OPTIMIZERS[name]()
    w, g = vec(W0), vec((1, -2, 0.5))
    w1, state = one_step(name, opt, opt.init(w), w, g)
    arrays: dict = {}  # what a checkpoint does to it: JSON + arrays, then the classes back
    data = json.loads(json.dumps(safestate.encode(state, arrays)))
    back = safestate.decode(data, {k: v.copy() for k, v in arrays.items()})
    restored = safestate.conform(back, opt.init(w), "aggregation.optimizer")
    assert type(restored) is type(state)
    kept, _ = one_step(name, opt, state, w1, g)
    resumed, _ = one_step(name, opt, restored, w1, g)
    assert resumed.tobytes() == kept.tobytes()  # bit-identical resume


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"fedavgm": {"momentum": 1.0}}, "fedavgm.momentum"),
        ({"fedavgm": {"momentum": -0.1}}, "fedavgm.momentum"),
        ({"fedavgm": {"nesterov": "yes"}}, "fedavgm.nesterov"),
        ({"fedadagrad": {"beta1": 1.0}}, "fedadagrad.beta1"),
        ({"fedadagrad": {"tau": 0.0}}, "fedadagrad.tau"),
        ({"fedadam": {"beta1": 1.0}}, "fedadam.beta1"),
        ({"fedadam": {"beta2": -0.5}}, "fedadam.beta2"),
        ({"fedadam": {"tau": -1e-3}}, "fedadam.tau"),
        ({"fedyogi": {"beta2": 1.5}}, "fedyogi.beta2"),
        ({"fedyogi": {"tau": 0}}, "fedyogi.tau"),
        ({"fedasync": {"alpha": 0.0}}, "fedasync.alpha"),
        ({"fedasync": {"alpha": 1.5}}, "fedasync.alpha"),
        ({"fedasync": {"staleness": "linear"}}, "fedasync.staleness"),
        ({"fedasync": {"a": -1.0}}, "fedasync.a"),
        ({"fedasync": {"b": -1}}, "fedasync.b"),
    ],
)
def test_bad_parameters_are_one_line_config_errors_naming_the_field(spec, field):
    with pytest.raises(ConfigError, match=rf"aggregation\.optimizer\.{field}") as info:
        build_optimizer(spec)
    assert "\n" not in str(info.value)


def test_an_unknown_staleness_function_lists_the_known_ones():
    with pytest.raises(ConfigError, match="constant, polynomial, hinge"):
        build_optimizer({"fedasync": {"staleness": "linear"}})


def test_the_edges_of_the_ranges_are_accepted():
    build_optimizer({"fedavgm": {"momentum": 0.0}})
    build_optimizer({"fedadam": {"beta1": 0.0, "beta2": 0.0}})
    build_optimizer({"fedasync": {"alpha": 1.0, "a": 0.0, "b": 0}})
