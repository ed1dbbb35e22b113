"""The rule chain on the torch backend (aggregation.backend) against the numpy one.

Every shipped rule, recipe and optimizer that says it accepts torch is run on the same inputs on
both backends (torch on the CPU here; a GPU is the same code on another device) and must agree
within float32 tolerance, make the same discrete decisions (selection, clipping), and keep
states that a checkpoint stores as numpy. The backend choice itself (auto / numpy / torch) and
its one-line errors are tested against rules that accept one backend only.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from rayfl.aggregation import OPTIMIZERS, RECIPES, Rule, arrays, build_rules, start_step
from rayfl.aggregation.backend import Placement, choose, to_host_tree
from rayfl.aggregation.build import build_optimizer, build_rule_list
from rayfl.config import load_config
from rayfl.errors import ConfigError

K, P = 12, 3000
TORCH = Placement("torch", torch.device("cpu"))


def _inputs(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    base = rng.normal(size=P).astype(np.float32)
    # updates that share a direction (so similarity selection keeps some and drops others),
    # two of them long enough to be clipped
    updates = (base + 1.5 * rng.normal(size=(K, P))).astype(np.float32)
    updates[3] *= 40.0
    updates[7] *= -25.0
    staleness = rng.integers(0, 30, size=K)
    losses = rng.uniform(0.5, 2.5, size=K)
    w = rng.normal(scale=0.1, size=P).astype(np.float32)
    return updates, staleness, losses, w


def _run_chain(rule: Rule, placement: Placement | None, iterations: int = 4):
    """Runs ``rule`` and sgd for a few iterations; returns the host results of each."""
    sgd = OPTIMIZERS["sgd"]()
    updates, staleness, losses, w = _inputs()
    native = (placement or Placement("numpy")).native
    w_n = native(w)
    state = rule.init(w_n)
    out = []
    for t in range(iterations):
        g = native(np.roll(updates, t, axis=0).copy())
        step = start_step(t + 1000, g, staleness, losses, 0.05, updates_writable=True)
        step, state = rule.update(step, state, w_n)
        w_n, _ = sgd.apply(step, (), w_n)
        state = rule.commit(step, state, w_n)
        out.append((step, arrays.to_host(w_n)))
    return out, to_host_tree(state)


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_every_recipe_agrees_on_both_backends(recipe):
    rule = build_rules(RECIPES[recipe]())
    assert "torch" in rule.backends, f"{recipe}: a shipped recipe should accept torch"
    on_numpy, state_np = _run_chain(rule, None)
    on_torch, state_t = _run_chain(rule, TORCH)
    for (step_np, w_np), (step_t, w_t) in zip(on_numpy, on_torch, strict=True):
        assert isinstance(w_t, np.ndarray) and w_t.dtype == np.float32
        np.testing.assert_allclose(w_t, w_np, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(step_t.weights, step_np.weights, rtol=1e-4, atol=1e-9)
        assert step_t.lr == pytest.approx(step_np.lr, rel=1e-12)
        for key, value in step_np.metrics.items():  # selections and counts: the same
            assert step_t.metrics[key] == pytest.approx(value, rel=1e-4, abs=1e-9), key
        assert arrays.is_tensor(step_t.direction) and not arrays.is_tensor(step_np.direction)
    for a, b in zip(state_np, state_t, strict=True):  # momentum's g_{t-1} comes back as numpy
        for x, y in zip(a, b, strict=True):
            if x is not None:
                assert isinstance(y, np.ndarray)
                np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-6)


def test_the_wkafl_inputs_exercise_selection_and_both_clips():
    """The inputs above are not trivial: some updates are dropped by similarity selection and
    the long ones are clipped, so both backends had discrete decisions to agree on."""
    (first, _), *_ = _run_chain(build_rules(RECIPES["wkafl"]()), TORCH)[0]
    assert 0 < first.metrics["agg/selected"] < K
    norms = np.sqrt(arrays.row_sq_norms(first.updates))
    assert norms.max() <= 100.0 * (1 + 1e-5)  # momentum_clip's C1


@pytest.mark.parametrize("name", ["sgd", "fedavgm", "fedadagrad", "fedadam", "fedyogi"])
def test_every_torch_ready_optimizer_agrees_on_both_backends(name):
    opt = build_optimizer(name)
    assert "torch" in opt.backends
    updates, staleness, losses, w = _inputs(1)
    results = []
    for placement in (Placement("numpy"), TORCH):
        w_n = placement.native(w)
        state = opt.init(w_n)
        for t in range(5):
            direction = placement.native(updates[t % K] * np.float32(0.01))
            step = dataclasses.replace(
                start_step(t, placement.native(updates), staleness, losses, 0.1),
                direction=direction,
            )
            w_n, state = opt.apply(step, state, w_n)
        results.append((arrays.to_host(w_n), to_host_tree(state)))
    (w_np, s_np), (w_t, s_t) = results
    np.testing.assert_allclose(w_t, w_np, rtol=1e-5, atol=1e-6)
    for x, y in zip(s_np, s_t, strict=True):
        np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-7)


def _numpy_only() -> Rule:
    def update(step, state, params):
        return dataclasses.replace(step, weights=np.asarray(step.weights)), state

    return Rule(lambda p: (), update)


def _torch_only() -> Rule:
    rule = _numpy_only()
    return rule._replace(backends=("torch",))


def test_auto_runs_torch_only_on_a_gpu_server():
    rules = build_rule_list(RECIPES["wkafl"]())
    sgd = ("aggregation.optimizer", build_optimizer("sgd"))
    assert choose("auto", rules, sgd, has_gpu=False) == "numpy"
    assert choose("auto", rules, sgd, has_gpu=True) == "torch"
    assert choose("torch", rules, sgd, has_gpu=False) == "torch"
    assert choose("numpy", rules, sgd, has_gpu=True) == "numpy"


def test_auto_falls_back_to_numpy_for_a_numpy_only_rule():
    rules = [*build_rule_list(["mean"]), ("aggregation.rules[1] mine", _numpy_only())]
    sgd = ("aggregation.optimizer", build_optimizer("sgd"))
    assert choose("auto", rules, sgd, has_gpu=True) == "numpy"
    with pytest.raises(ConfigError) as e:
        choose("torch", rules, sgd, has_gpu=True)
    message = str(e.value)
    assert "aggregation.backend=torch" in message and "aggregation.rules[1] mine" in message
    assert "\n" not in message


def test_a_torch_only_rule_runs_on_torch_and_a_mixed_chain_is_refused():
    sgd = ("aggregation.optimizer", build_optimizer("sgd"))
    only_torch = [("aggregation.rules[0] t", _torch_only())]
    assert choose("auto", only_torch, sgd, has_gpu=False) == "torch"
    mixed = [*only_torch, ("aggregation.rules[1] n", _numpy_only())]
    with pytest.raises(ConfigError, match="no backend runs the whole chain"):
        choose("auto", mixed, sgd, has_gpu=False)


def test_the_config_refuses_torch_for_a_numpy_only_optimizer():
    with pytest.raises(ConfigError, match=r"aggregation.backend=torch: aggregation.optimizer"):
        load_config("fedasync", ["aggregation.backend=torch"])
    with pytest.raises(ConfigError, match="aggregation.backend"):
        load_config("wkafl", ["aggregation.backend=jax"])
    assert load_config("wkafl", ["aggregation.backend=torch"]).aggregation.backend == "torch"


def test_a_rule_with_bad_backends_is_a_config_error():
    from rayfl.aggregation.build import _checked_rule

    with pytest.raises(ConfigError, match="its backends"):
        _checked_rule("aggregation.rules.mine", _numpy_only()._replace(backends=("jax",)))


def test_rounds_aggregate_alike_on_both_backends_and_checkpoint_as_numpy():
    """The synchronous engine's aggregator (FedAdam over a round's client models) on torch:
    the same model within float32 tolerance, and a numpy checkpoint that restores."""
    from rayfl.clients.rounds import RoundUpdate
    from rayfl.rounds.aggregate import RoundAggregator
    from rayfl.runtime.safestate import conform, decode, encode

    updates, _, losses, w = _inputs(2)
    results = []
    for backend in ("numpy", "torch"):
        cfg = load_config(
            "fedadam", ["model.name=mlp", f"aggregation.backend={backend}", "data.num_clients=20"]
        )
        agg = RoundAggregator(cfg, w)
        new = w
        for t in range(3):
            got = [
                RoundUpdate(i, new - 0.01 * updates[(t + i) % K], float(losses[i]), 10 + i)
                for i in range(5)
            ]
            new, _ = agg.aggregate(t, new, got)
        state = agg.checkpoint()
        assert isinstance(state["optimizer_state"].m, np.ndarray)
        stored: dict[str, np.ndarray] = {}  # as a checkpoint file holds it: no pickle
        agg.restore(decode(encode(state, stored), stored), conform)
        assert arrays.is_tensor(agg.optimizer_state.m) == (backend == "torch")
        results.append(new)
    assert all(isinstance(r, np.ndarray) and r.dtype == np.float32 for r in results)
    np.testing.assert_allclose(results[1], results[0], rtol=1e-5, atol=1e-6)
