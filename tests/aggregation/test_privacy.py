"""Tests of DP-FedAvg's rules (dp_clip, dp_noise) and their privacy accountant.

Clipping is checked on hand-made vectors with the norms worked out in comments; the noise
empirically; the running epsilon against dp-accounting's own calculation, done here
independently of the rule.
"""

from __future__ import annotations

import json
import math
import sys

import dp_accounting
import numpy as np
import pytest
from dp_accounting.rdp import RdpAccountant

from rayfl.aggregation import RULES, build_rule_list, build_rules, chain, start_step
from rayfl.aggregation.privacy import (
    PRIVACY_RULES,
    NoiseState,
    _library_counts_replaced_record_twice,
    _one_round,
    default_delta,
    dp_clip,
    dp_noise,
    epsilon,
)
from rayfl.errors import ConfigError, RayflError
from rayfl.runtime import safestate

W = np.zeros(2, dtype=np.float32)  # the rules do not read the model


def make_step(updates, t=0, n=100, seed=0, weights=None):
    """A synchronous round's Step: FedAvg weights |D_i| / sum unless given."""
    updates = np.asarray(updates, dtype=np.float32)
    k = updates.shape[0]
    sizes = np.arange(1, k + 1, dtype=np.float64)
    return start_step(
        t,
        updates,
        np.zeros(k, dtype=np.int64),
        np.ones(k),
        1.0,
        weights=sizes / sizes.sum() if weights is None else weights,
        seed=seed,
        num_clients=n,
    )


def run(rule, steps, updates, state=None, start=0, n=100, seed=0):
    """``steps`` iterations of ``rule`` from ``state``; the last Step and the state."""
    state = rule.init(W) if state is None else state
    for t in range(start, start + steps):
        step, state = rule.update(make_step(updates, t=t, n=n, seed=seed), state, W)
    return step, state


def independent_accountant(z, k, n):
    """The library's own accountant and one round's event, built here, not by the rule.

    Replace-one: one client's clipped update may go from u to -u, sensitivity 2S; with noise
    std z S on the sum, std / sensitivity is z / 2, which is how dp-accounting reads the
    Gaussian event's multiplier for sampling without replacement."""
    accountant = RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    event = dp_accounting.SampledWithoutReplacementDpEvent(
        n, k, dp_accounting.GaussianDpEvent(z / 2)
    )
    return accountant, event


def independent_epsilon(z, k, n, steps, delta):
    """The library's epsilon for ``steps`` rounds, composed one event at a time."""
    accountant, event = independent_accountant(z, k, n)
    for _ in range(steps):
        accountant.compose(event)
    return accountant.get_epsilon(delta)


# --- dp_clip ------------------------------------------------------------------------------------


def test_dp_clip_clips_each_update_to_the_norm_and_sets_uniform_weights():
    updates = [
        [3.0, 4.0],  # norm 5 > 1: scaled by 1/5 to [0.6, 0.8]
        [0.6, 0.8],  # norm 1 = S: kept
        [0.0, 0.5],  # norm 0.5: kept
        [-6.0, 8.0],  # norm 10: scaled by 1/10 to [-0.6, 0.8]
    ]
    step, _ = dp_clip(clip_norm=1.0).update(make_step(updates), (), W)
    np.testing.assert_allclose(
        step.updates, [[0.6, 0.8], [0.6, 0.8], [0.0, 0.5], [-0.6, 0.8]], rtol=1e-6
    )
    np.testing.assert_array_equal(step.weights, [0.25] * 4)  # not the |D_i| weights 1..4 / 10
    assert step.metrics["dp/clipped_fraction"] == 0.5  # 2 of 4 exceeded S


def test_dp_clip_scales_to_a_larger_norm_and_leaves_its_input_alone():
    updates = np.array([[3.0, 4.0], [1.0, 0.0]], dtype=np.float32)
    step, _ = dp_clip(clip_norm=2.0).update(make_step(updates), (), W)
    np.testing.assert_allclose(step.updates, [[1.2, 1.6], [1.0, 0.0]], rtol=1e-6)  # 5 -> 2
    assert step.metrics["dp/clipped_fraction"] == 0.5
    np.testing.assert_array_equal(updates, [[3.0, 4.0], [1.0, 0.0]])


# --- dp_noise: the noise --------------------------------------------------------------------


def test_the_noise_std_is_z_s_over_k():
    k, p = 4, 200_000
    rule = dp_noise(noise_multiplier=1.5, clip_norm=2.0, delta=1e-5)
    step, _ = rule.update(make_step(np.zeros((k, p)), weights=np.full(k, 1 / k)), NoiseState(0), W)
    assert step.metrics["dp/noise_std"] == pytest.approx(0.75)  # z S / K = 1.5 * 2 / 4
    assert step.direction.dtype == np.float32
    assert np.std(step.direction) == pytest.approx(0.75, rel=0.01)
    assert abs(np.mean(step.direction)) < 0.01


def noise(t, seed=0):
    rule = chain(dp_clip(clip_norm=1.0), dp_noise(noise_multiplier=1.0, clip_norm=1.0))
    step, _ = run(rule, 1, np.zeros((5, 1000)), start=t, seed=seed)
    return step.direction


def test_the_same_seed_and_iteration_give_the_same_noise_and_others_other_noise():
    np.testing.assert_array_equal(noise(3), noise(3))
    assert not np.array_equal(noise(3), noise(4))
    assert not np.array_equal(noise(3), noise(3, seed=1))


def test_without_noise_the_direction_is_the_mean_of_the_clipped_updates():
    updates = [[3.0, 4.0], [0.0, 0.5], [-6.0, 8.0]]  # clipped to S = 1: [.6,.8], [0,.5], [-.6,.8]
    rule = build_rules([{"dp_clip": {}}, {"dp_noise": {"noise_multiplier": 0.0}}, "constant_lr"])
    step, _ = run(rule, 1, updates)
    np.testing.assert_allclose(step.direction, [0.0, 2.1 / 3], rtol=1e-6, atol=1e-7)
    assert step.metrics["dp/epsilon"] == math.inf  # no noise, no privacy
    assert step.metrics["dp/noise_std"] == 0.0


# --- dp_noise: the accountant ---------------------------------------------------------------


def test_the_installed_library_reads_the_multiplier_as_std_over_sensitivity():
    # If this fails, dp-accounting now counts replace-one's 2S itself (google/differential-
    # privacy issue 378 fixed): the rule adapts, but independent_epsilon's z / 2 must go.
    assert not _library_counts_replaced_record_twice()


def test_the_running_epsilon_equals_the_librarys_own_calculation():
    rule = chain(dp_clip(), dp_noise(noise_multiplier=1.1, delta=1e-5))
    state = rule.init(W)
    updates = np.ones((10, 3))
    accountant, event = independent_accountant(1.1, 10, 200)
    for t in range(3):
        step, state = rule.update(make_step(updates, t=t, n=200), state, W)
        accountant.compose(event)  # the library's running total after t + 1 rounds
        assert step.metrics["dp/epsilon"] == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-9)
    assert state[1] == NoiseState(3)


def test_the_default_delta_is_one_over_n_to_the_1_1():
    step, _ = run(chain(dp_clip(), dp_noise()), 1, np.ones((10, 3)), n=200)
    assert default_delta(200) == pytest.approx(200**-1.1)
    expected = independent_epsilon(1.0, 10, 200, 1, 200**-1.1)
    assert step.metrics["dp/epsilon"] == pytest.approx(expected, rel=1e-9)


def test_epsilon_is_exactly_a_fresh_accountants_that_composes_all_rounds_at_once():
    accountant = RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    gaussian = dp_accounting.GaussianDpEvent(0.45)  # z / 2, as in independent_epsilon
    accountant.compose(dp_accounting.SampledWithoutReplacementDpEvent(500, 20, gaussian), 37)
    assert epsilon(0.9, 20, 500, 37, 1e-6) == accountant.get_epsilon(1e-6)


def test_epsilon_grows_with_the_steps_and_falls_with_the_noise_multiplier():
    by_steps = [epsilon(1.0, 10, 1000, s, 1e-5) for s in (0, 1, 10, 100)]
    assert by_steps[0] == 0.0
    assert by_steps == sorted(by_steps) and len(set(by_steps)) == 4
    by_noise = [epsilon(z, 10, 1000, 50, 1e-5) for z in (0.8, 1.0, 2.0)]
    assert by_noise == sorted(by_noise, reverse=True) and len(set(by_noise)) == 3


def test_epsilon_refuses_a_sample_larger_than_the_population():
    with pytest.raises(ValueError, match="sample_size=11"):
        epsilon(1.0, 11, 10, 1, 1e-5)


# --- checkpoints ----------------------------------------------------------------------------


def roundtrip(state, template):
    arrays: dict[str, np.ndarray] = {}
    data = json.loads(json.dumps(safestate.encode(state, arrays)))  # really through JSON text
    return safestate.conform(safestate.decode(data, arrays), template, "state")


def test_the_state_goes_through_a_checkpoint():
    assert roundtrip(NoiseState(7), NoiseState(0)) == NoiseState(7)
    assert type(roundtrip(NoiseState(7), NoiseState(0))) is NoiseState


def test_a_rule_restored_at_step_n_continues_to_the_same_epsilon_and_noise():
    updates = np.ones((10, 4))
    unbroken, _ = run(chain(dp_clip(), dp_noise()), 4, updates)
    _, state = run(chain(dp_clip(), dp_noise()), 2, updates)
    _one_round.cache_clear()  # the restored rule must get there by itself, not from the cache
    restored_rule = chain(dp_clip(), dp_noise())  # as a resumed run builds it: afresh
    state = roundtrip(state, restored_rule.init(W))
    resumed, state = run(restored_rule, 2, updates, state=state, start=2)
    assert state[1] == NoiseState(4)
    assert resumed.metrics["dp/epsilon"] == unbroken.metrics["dp/epsilon"]
    np.testing.assert_array_equal(resumed.direction, unbroken.direction)


# --- bad input and misuse ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"noise_multiplier": -1}, "dp_noise.noise_multiplier=-1 must be >= 0"),
        ({"noise_multiplier": math.nan}, "dp_noise.noise_multiplier=nan must be finite"),
        ({"clip_norm": 0}, "dp_noise.clip_norm=0 must be > 0"),
        ({"clip_norm": -2.0}, "dp_noise.clip_norm=-2.0 must be > 0"),
        ({"delta": 0}, "dp_noise.delta=0 must be > 0"),
        ({"delta": 1}, "dp_noise.delta=1 must be < 1"),
        ({"delta": 1.5}, "dp_noise.delta=1.5 must be < 1"),
        ({"accountant": "pld"}, "dp_noise.accountant='pld' is not a known accountant: use one of rdp"),
    ],
)  # fmt: skip
def test_each_bad_parameter_is_a_one_line_error_naming_its_field(params, field):
    with pytest.raises(ConfigError) as info:
        build_rule_list([{"dp_noise": params}])
    message = str(info.value)
    assert message.startswith(f"aggregation.rules.{field}") and "\n" not in message


def test_a_bad_clip_norm_of_dp_clip_names_dp_clip():
    with pytest.raises(ConfigError, match=r"^aggregation\.rules\.dp_clip\.clip_norm=0 must be > 0"):
        build_rule_list([{"dp_clip": {"clip_norm": 0}}])


def test_without_dp_accounting_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "dp_accounting", None)  # import dp_accounting fails
    with pytest.raises(
        ConfigError, match=r"aggregation\.rules\.dp_noise .*pip install 'rayfl\[dp\]'"
    ):
        build_rule_list([{"dp_noise": {}}])


def test_dp_noise_refuses_updates_that_dp_clip_did_not_bound():
    rule = dp_noise(clip_norm=1.0)
    with pytest.raises(RayflError, match="norm 5 > clip_norm=1: put dp_clip"):
        rule.update(make_step([[3.0, 4.0], [0.0, 0.0]], weights=np.full(2, 0.5)), NoiseState(0), W)
    with pytest.raises(RayflError, match="weights are not uniform"):
        rule.update(make_step([[0.3, 0.4], [0.0, 0.0]]), NoiseState(0), W)  # FedAvg's |D_i|


def test_dp_noise_needs_the_population():
    rule = chain(dp_clip(), dp_noise())
    with pytest.raises(RayflError, match="num_clients=0"):
        run(rule, 1, np.ones((3, 2)), n=0)


def test_the_rules_are_shipped_by_name_in_their_stages():
    assert set(PRIVACY_RULES) == {"dp_clip", "dp_noise"} <= set(RULES)
    stages = [rule.stage for _, rule in build_rule_list(["dp_clip", "dp_noise", "constant_lr"])]
    assert stages == ["updates", "direction", "lr"]
