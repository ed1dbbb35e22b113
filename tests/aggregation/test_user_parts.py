"""A user's rules, server optimizers and control rules by import path (tests/fixtures/user_rules.py):
they are built, checked and run like the shipped ones, and each broken one is a one-line error
naming its config field."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import rayfl
from rayfl.aggregation import build_optimizer, build_rule_list, chain, init_rule_state, start_step
from rayfl.aggregation.control import build_controls
from rayfl.errors import ConfigError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures"))

W = np.zeros(2, np.float32)


def test_a_user_rule_with_state_and_commit():
    rules = build_rule_list(["user_rules:counter", "user_rules:scale", "weighted_sum"])
    rule = chain(*(r for _, r in rules))
    state = init_rule_state(rules, W)
    step = start_step(0, np.ones((2, 2), np.float32), [0, 0], [1.0, 1.0], 0.1)
    out, state = rule.update(step, state, W)
    np.testing.assert_allclose(out.direction, [2.0, 2.0])  # scale(2) then the weighted sum
    assert state[0] == (1, 0) and out.metrics["user/seen"] == 1.0
    state = rule.commit(out, state, W)
    assert state[0] == (1, 1)


def test_a_user_server_optimizer():
    opt = build_optimizer("user_rules:half_step")
    step = start_step(0, np.ones((1, 2), np.float32), [0], [1.0], 0.5)
    step = step.__class__(**{**step.__dict__, "direction": np.array([4.0, 0.0], np.float32)})
    new, _ = opt.apply(step, opt.init(W), np.ones(2, np.float32))
    np.testing.assert_allclose(new, [0.0, 1.0])  # 1 - 0.25 * 4


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: build_rule_list(["user_rules:two_argument_update"]),
         r"aggregation.rules.user_rules:two_argument_update: its update\(step, state, params\) must take 3"),
        (lambda: build_rule_list(["user_rules:not_a_rule"]),
         r"aggregation.rules.user_rules:not_a_rule returned dict, not a Rule"),
        (lambda: build_rule_list(["user_rules:nope"]),
         r"aggregation.rules\[0\]='user_rules:nope': user_rules has no attribute 'nope'"),
        (lambda: build_rule_list([{"user_rules:scale": {"by": "two"}}]),
         r"aggregation.rules.user_rules:scale.by='two' must be float"),
        (lambda: build_rule_list(["weighted_sum", "user_rules:late_aggregator"]),
         r"aggregation.rules\[1\] user_rules:late_aggregator is a second aggregate rule"),
        (lambda: init_rule_state(build_rule_list(["user_rules:lock_state"]), W),
         r"aggregation.rules\[0\] user_rules:lock_state: its state \(lock\) cannot be checkpointed"),
        (lambda: build_optimizer("user_rules:nope"),
         r"aggregation.optimizer='user_rules:nope': user_rules has no attribute"),
        (lambda: build_optimizer({"sgd": {"lr": 1}}), r"aggregation.optimizer.sgd.lr is not a parameter"),
        (lambda: build_controls({"user_rules:every_other_k": {"k_lo": 1}}),
         r"aggregation.control.user_rules:every_other_k.k_lo is not a parameter of every_other_k: did you mean 'k_low'"),
    ],
)  # fmt: skip
def test_broken_user_parts_are_one_line_errors(build, message):
    with pytest.raises(ConfigError, match=message) as info:
        build()
    assert "\n" not in str(info.value)


def test_user_parts_in_the_engine(ray_session, tmp_path):
    """A user rule, optimizer and control rule in one run; an optimizer returning float64 stops
    the run with a one-line error and keeps what was written."""
    sets = [
        "iterations=6", "client.num_workers=2", "eval.every=3",
        "aggregation.rules=[user_rules:counter, weighted_sum, constant_lr]",
        "aggregation.optimizer=user_rules:half_step",
        "aggregation.control={user_rules:every_other_k: {k_low: 2}}",
    ]  # fmt: skip
    result = rayfl.run("tiny", overrides=sets, output=tmp_path / "ok", progress=False)
    metrics = pq.read_table(result.run_dir / "metrics.parquet").to_pandas()
    assert metrics["user/seen"].tolist() == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert metrics["agg/k"].tolist() == [4, 2, 4, 2, 4, 2]
    with pytest.raises(rayfl.RayflError, match="aggregation.optimizer made a model of .* float64"):
        rayfl.run(
            "tiny", overrides=[*sets[:4], "aggregation.optimizer=user_rules:wrong_dtype"],
            output=tmp_path / "bad", progress=False,
        )  # fmt: skip
    assert (tmp_path / "bad" / "config.yaml").is_file()
