"""FedProx and SCAFFOLD's client tasks and SCAFFOLD's server rule, without Ray: the loop runs on
a tiny world (as in test_local.py) and every number is recomputed here by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rayfl.aggregation import build_rules, init_rule_state, start_step
from rayfl.aggregation.build import RULES, build_rule_list
from rayfl.aggregation.scaffold import ScaffoldState, scaffold
from rayfl.clients.local import LocalTrainer
from rayfl.clients.shipped import TASKS, build_task
from rayfl.clients.state import ClientStates, pack, unpack
from rayfl.clients.task import DataSpec
from rayfl.config import ModelConfig
from rayfl.errors import ConfigError, RayflError
from rayfl.models import build_model, get_flat
from rayfl.runtime.safestate import conform, decode, encode

MEAN, STD = (0.5,), (0.25,)
LR = 0.1


def _world():
    """12 uint8 2x2 images, two clients of 6."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(12, 1, 2, 2), dtype=np.uint8)
    y = np.array([0, 1] * 6, dtype=np.int64)
    return x, y, np.arange(12, dtype=np.int64), np.array([0, 6, 12], dtype=np.int64)


def _spec():
    return DataSpec.of(_world()[0], 2, MEAN, STD)


def _model():
    return build_model(ModelConfig("mlp", hidden=(4,)), (1, 2, 2), 2, 0)


def _trainer(task, params=None, local_steps=1, batch_size=6):
    """A client's loop; batch_size 6 = a client's size, so every step is a full-batch one."""
    x, y, indices, offsets = _world()
    return LocalTrainer(
        build_task(task, params, _spec()),
        task,
        _model(),
        x,
        y,
        indices,
        offsets,
        batch_size=batch_size,
        local_steps=local_steps,
        local_lr=LR,
        seed=3,
    )


def _gradient(w, client):
    """grad of the mean cross-entropy over the client's 6 samples at ``w``, by hand (float32)."""
    x, y, _, _ = _world()
    ref = _model()
    with torch.no_grad():
        torch.nn.utils.vector_to_parameters(torch.from_numpy(w.copy()), ref.parameters())
    part = slice(6 * client, 6 * client + 6)
    xb = (torch.from_numpy(x[part]).float() / 255 - MEAN[0]) / STD[0]
    torch.nn.functional.cross_entropy(ref(xb), torch.from_numpy(y[part])).backward()
    return torch.cat([p.grad.reshape(-1) for p in ref.parameters()]).numpy()


def _close(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def _controls(size):
    """A server c and a client c_i, distinct per coordinate, of gradient scale."""
    c = np.linspace(-0.2, 0.3, size, dtype=np.float32)
    c_i = np.linspace(0.1, -0.15, size, dtype=np.float32)
    return c, c_i


# --- FedProx ------------------------------------------------------------------------------------


def test_fedprox_adds_the_proximal_term_to_every_local_gradient():
    mu = 0.5
    prox = _trainer("fedprox", {"mu": mu})
    w0 = get_flat(_model())
    # By hand: the first step is at w_t (no pull), the second is pulled back towards w_t.
    w1 = w0 - np.float32(LR) * _gradient(w0, 0)
    w2 = w1 - np.float32(LR) * (_gradient(w1, 0) + np.float32(mu) * (w1 - w0))
    trained, *_ = prox.train(0, 0, w0, epochs=2)
    _close(trained, w2)
    # K-async with 2 local steps: the pseudo-gradient of the same two steps
    update, *_ = _trainer("fedprox", {"mu": mu}, local_steps=2).update(0, 0, w0)
    np.testing.assert_allclose(update, (w0 - w2) / np.float32(LR), rtol=1e-4, atol=1e-5)


def test_fedprox_with_mu_0_is_classification_bit_for_bit():
    w = get_flat(_model())
    for kwargs in ({}, {"local_steps": 3, "batch_size": 4}):
        plain, prox = _trainer("classification", **kwargs), _trainer("fedprox", {"mu": 0}, **kwargs)
        assert plain.update(1, 2, w).vector.tobytes() == prox.update(1, 2, w).vector.tobytes()
        assert (
            plain.train(1, 2, w, epochs=2).vector.tobytes()
            == prox.train(1, 2, w, epochs=2).vector.tobytes()
        )


@pytest.mark.parametrize(("mu", "expected"), [(-1, "must be >= 0"), (float("nan"), "finite")])
def test_fedprox_refuses_a_bad_mu_naming_the_field(mu, expected):
    with pytest.raises(ConfigError) as info:
        build_task("fedprox", {"mu": mu}, _spec())
    msg = str(info.value)
    assert len(msg.splitlines()) == 1 and "client.task_params.mu" in msg and expected in msg


# --- SCAFFOLD's client ------------------------------------------------------------------------


def test_scaffold_corrects_the_gradient_by_c_minus_c_i():
    w = get_flat(_model())
    c, c_i = _controls(w.size)
    task = _trainer("scaffold")
    update, *_ = task.update(0, 0, w, pack("t", c_i), {"c": c})  # one step: the update is g
    _close(update, _gradient(w, 0) + (c - c_i))


def test_scaffold_state_and_report_follow_option_ii():
    w0 = get_flat(_model())
    c, c_i = _controls(w0.size)
    # Two local steps with the corrected gradient, by hand.
    g0 = _gradient(w0, 0)
    w1 = w0 - np.float32(LR) * (g0 + c - c_i)
    g1 = _gradient(w1, 0)
    w2 = w1 - np.float32(LR) * (g1 + c - c_i)
    trained, _, state, report = _trainer("scaffold").train(0, 0, w0, 2, pack("t", c_i), {"c": c})
    _close(trained, w2)
    new = unpack(state)
    assert new.dtype == np.float32 and new.shape == w0.shape
    # c_i+ = c_i - c + (x - y_i) / (K lr), which with full-batch steps is the mean raw gradient
    # along the path: c_i - c + (2 (c - c_i) + g0 + g1) / 2 = (g0 + g1) / 2.
    np.testing.assert_allclose(new, c_i - c + (w0 - w2) / np.float32(2 * LR), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(new, (g0 + g1) / 2, rtol=1e-4, atol=1e-5)
    # delta c_i is taken from the very bytes the server stores
    assert set(report) == {"delta_c"} and report["delta_c"].dtype == np.float32
    assert report["delta_c"].tobytes() == (new - c_i).tobytes()


def test_scaffold_starts_from_zero_and_reports_in_k_async_mode():
    w = get_flat(_model())
    c = np.zeros_like(w)
    update, _, state, report = _trainer("scaffold").update(1, 0, w, None, {"c": c})
    g = _gradient(w, 1)
    _close(update, g)  # c = c_i = 0: the plain gradient
    _close(unpack(state), g)  # one step: c_i+ = (x - y) / lr = g
    assert report["delta_c"].tobytes() == unpack(state).tobytes()  # c_i was 0


def test_scaffold_without_the_server_rule_is_one_line_naming_it():
    with pytest.raises(RayflError) as info:
        _trainer("scaffold").update(0, 0, get_flat(_model()))
    msg = str(info.value)
    assert len(msg.splitlines()) == 1 and "aggregation.rules" in msg and "`scaffold`" in msg


def test_scaffold_client_state_survives_a_checkpoint():
    w = get_flat(_model())
    c, c_i = _controls(w.size)
    trainer = _trainer("scaffold")
    store = ClientStates()
    store.accept(0, trainer.update(0, 0, w, pack("t", c_i), {"c": c}).state)
    arrays: dict[str, np.ndarray] = {}
    data = encode(store.checkpoint(), arrays)  # what the checkpoint file holds
    again = ClientStates()
    again.restore(decode(data, arrays), lambda i: trainer.task.init_state(i, w))
    assert again.get(0).dtype == np.float32
    assert again.get(0).tobytes() == store.get(0).tobytes()
    # and the resumed client computes the same next update
    first = trainer.update(0, 1, w, store.blob(0), {"c": c})
    resumed = trainer.update(0, 1, w, again.blob(0), {"c": c})
    assert first.vector.tobytes() == resumed.vector.tobytes()


def test_the_tasks_are_shipped():
    assert {"fedprox", "scaffold"} <= set(TASKS)


# --- SCAFFOLD's server rule ---------------------------------------------------------------------


def _step(deltas=None, num_clients=4, k=2, size=2):
    reports = {} if deltas is None else {"delta_c": np.asarray(deltas, dtype=np.float32)}
    updates = np.ones((k, size), dtype=np.float32)
    return start_step(
        3, updates, [0] * k, [1.0] * k, lr=1.0, reports=reports, num_clients=num_clients
    )


def test_the_rule_folds_k_over_n_of_the_mean_delta_into_c_and_broadcasts_it():
    rule = scaffold()
    w = np.zeros(2, dtype=np.float32)
    state = rule.init(w)
    assert isinstance(state, ScaffoldState) and state.c.dtype == np.float32
    assert rule.broadcast(state)["c"].tolist() == [0.0, 0.0]
    state = ScaffoldState(np.array([0.5, 0.0], dtype=np.float32))
    step = _step([[1.0, 2.0], [3.0, 4.0]], num_clients=4)
    after, same = rule.update(step, state, w)
    assert after is step and same is state  # the rule touches neither the step nor c here
    state = rule.commit(after, state, w)
    # c + (K / N) mean_j delta_j = [0.5, 0] + (2 / 4) [2, 3]
    assert state.c.dtype == np.float32 and state.c.tolist() == [1.5, 1.5]
    assert rule.broadcast(state)["c"].tolist() == [1.5, 1.5]


def test_the_rule_without_reports_names_client_task():
    rule = scaffold()
    w = np.zeros(2, dtype=np.float32)
    with pytest.raises(RayflError) as info:
        rule.update(_step(None), rule.init(w), w)
    assert "client.task=scaffold" in str(info.value)
    with pytest.raises(RayflError, match="client.task must be scaffold"):
        rule.update(_step(np.zeros((2, 3))), rule.init(w), w)
    with pytest.raises(RayflError, match="num_clients"):
        rule.update(_step(np.zeros((2, 2)), num_clients=0), rule.init(w), w)


def test_the_rule_chains_by_name_and_its_state_checkpoints():
    assert RULES["scaffold"] is scaffold
    spec = ["scaffold", "mean", "weighted_sum", "constant_lr"]
    rule = build_rules(spec)
    w = np.zeros(2, dtype=np.float32)
    state = rule.init(w)
    step, state = rule.update(_step([[4.0, 0.0], [0.0, 8.0]], num_clients=2), state, w)
    _close(step.direction, [1.0, 1.0])  # FedAvg of the updates, untouched by scaffold
    state = rule.commit(step, state, w)
    assert rule.broadcast(state)["c"].tolist() == [2.0, 4.0]  # (4 + 0) / 2, (0 + 8) / 2
    arrays: dict[str, np.ndarray] = {}
    template = init_rule_state(build_rule_list(spec), w)
    back = conform(decode(encode(state, arrays), arrays), template, "state")
    assert isinstance(back[0], ScaffoldState) and back[0].c.tolist() == [2.0, 4.0]
