"""The one local training loop, the client task's hooks and the per-client state, without Ray:
tiny worlds whose updates are computed here by hand."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rayfl.clients.local import LocalTrainer
from rayfl.clients.shipped import build_task
from rayfl.clients.state import ClientStates, pack, unpack
from rayfl.clients.task import ClientTask, DataSpec
from rayfl.config import ModelConfig
from rayfl.errors import ConfigError, RayflError
from rayfl.evaluation import evaluate
from rayfl.models import build_model, get_flat

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures"))  # client_tasks

MEAN, STD = (0.5,), (0.25,)


def _world():
    """12 uint8 2x2 images, two clients of 6."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(12, 1, 2, 2), dtype=np.uint8)
    y = np.array([0, 1] * 6, dtype=np.int64)
    indices = np.arange(12, dtype=np.int64)
    offsets = np.array([0, 6, 12], dtype=np.int64)
    return x, y, indices, offsets


def _model():
    return build_model(ModelConfig("mlp", hidden=(4,)), (1, 2, 2), 2, 0)


def _trainer(task="classification", params=None, local_steps=1, batch_size=6, lr=0.1):
    x, y, indices, offsets = _world()
    spec = DataSpec.of(x, 2, MEAN, STD)
    return LocalTrainer(
        build_task(task, params, spec),
        task,
        _model(),
        x,
        y,
        indices,
        offsets,
        batch_size=batch_size,
        local_steps=local_steps,
        local_lr=lr,
        seed=3,
    )


def _full_batch_gradient(w, client):
    """grad of the mean cross-entropy over the client's 6 samples at ``w``, by hand."""
    x, y, _, _ = _world()
    ref = _model()
    with torch.no_grad():
        torch.nn.utils.vector_to_parameters(torch.from_numpy(w.copy()), ref.parameters())
    part = slice(6 * client, 6 * client + 6)
    xb = (torch.from_numpy(x[part]).float() / 255 - MEAN[0]) / STD[0]
    loss = torch.nn.functional.cross_entropy(ref(xb), torch.from_numpy(y[part]))
    loss.backward()
    return torch.cat([p.grad.reshape(-1) for p in ref.parameters()]).numpy(), float(loss.detach())


# --- the default task: today's numbers ---------------------------------------------------------


def test_update_is_the_minibatch_gradient_and_is_deterministic():
    uc = _trainer()
    w = get_flat(_model())
    g1, loss1, state1, _ = uc.update(1, 0, w)
    g2, loss2, _, _ = uc.update(1, 0, w)
    assert np.array_equal(g1, g2) and loss1 == loss2
    assert state1 is None  # the default task keeps no state: nothing to send or store
    expected, loss = _full_batch_gradient(w, 1)  # batch_size = client size
    np.testing.assert_allclose(g1, expected, rtol=1e-5, atol=1e-6)
    assert loss1 == pytest.approx(loss, rel=1e-6)


def test_local_steps_pseudo_gradient():
    one, two = _trainer(), _trainer(local_steps=2)
    w = get_flat(_model())
    g_one, *_ = one.update(0, 0, w)
    g_two, *_ = two.update(0, 0, w)
    # Full-batch steps (batch_size = client size): (w0 - w2) / lr = g(w0) + g(w1), w1 = w0 - lr g(w0).
    g_at_w1, *_ = one.update(0, 1, w - np.float32(0.1) * g_one)
    np.testing.assert_allclose(g_two, g_one + g_at_w1, rtol=1e-4, atol=1e-5)
    # The model is reloaded for the next job, so repeated calls agree.
    assert np.array_equal(g_two, two.update(0, 0, w)[0])


def test_a_round_trains_from_the_received_weights():
    uc = _trainer()
    w = get_flat(_model())
    trained, loss, state, _ = uc.train(1, 0, w, epochs=1)  # one full-batch step
    g, expected_loss = _full_batch_gradient(w, 1)
    np.testing.assert_allclose(trained, w - np.float32(0.1) * g, rtol=1e-5, atol=1e-6)
    assert loss == pytest.approx(expected_loss, rel=1e-6) and state is None
    again = uc.train(1, 0, w, epochs=1)[0]
    assert np.array_equal(trained, again)


def test_evaluate_counts_correct_predictions():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(1, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[-1.0], [1.0]]))
        model[1].bias.zero_()
    x = np.array([0, 255, 255, 0], dtype=np.uint8).reshape(4, 1, 1, 1)
    y = np.array([0, 1, 0, 0])
    task = build_task("classification", {}, DataSpec.of(x, 2, (0.5,), (0.5,)))
    acc, loss = evaluate(task, model, x, y, torch.device("cpu"), 3)
    assert acc == 0.75
    # logits +-1: cross-entropy log(1 + e^-2) when right, log(1 + e^2) when wrong
    assert loss == pytest.approx((3 * math.log1p(math.exp(-2)) + math.log1p(math.exp(2))) / 4)


# --- a task with per-client state ---------------------------------------------------------------


def test_the_state_changes_the_update_and_comes_back_new():
    counting = _trainer("client_tasks:Counting", {"scale": 0.5})
    plain = _trainer()
    w = get_flat(_model())
    g, *_ = plain.update(1, 0, w)
    first, _, state, _ = counting.update(1, 0, w)  # no state yet: init_state's 0
    assert np.array_equal(first, g) and unpack(state) == 1
    third, _, state, _ = counting.update(1, 0, w, pack("t", 2))  # two accepted before: x (1 + 1)
    assert np.array_equal(third, 2 * g) and unpack(state) == 3


def test_a_control_variate_is_the_gradient_after_one_step():
    cv = _trainer("client_tasks:ControlVariate", {"beta": 0.5})
    w = get_flat(_model())
    g, _, state, _ = cv.update(0, 0, w)
    c = unpack(state)
    assert c.dtype == np.float32 and c.shape == w.shape
    # c_0 = 0, so g - beta c = g, and option II gives c_1 = (w - (w - lr g)) / lr = g
    np.testing.assert_allclose(c, g, rtol=1e-4, atol=1e-6)
    g2, *_ = cv.update(0, 0, w, state)  # corrected by -beta c_1
    np.testing.assert_allclose(g2, g - 0.5 * c, rtol=1e-5, atol=1e-6)


def test_a_non_image_task_trains_and_scores_itself():
    from client_tasks import MeanSquaredError, regression

    ds = regression(n=40, features=3)
    task = MeanSquaredError()
    task.setup(DataSpec.of(ds.x_train, 1, (), ()))
    model = build_model(ModelConfig("mlp", hidden=(4,)), ds.input_shape, 1, 0)
    acc, loss = evaluate(task, model, ds.x_test, ds.y_test, torch.device("cpu"), 4)
    with torch.no_grad():
        out = model(torch.from_numpy(ds.x_test)).squeeze(-1).numpy()
    assert math.isnan(acc)
    assert loss == pytest.approx(float(np.mean((out - ds.y_test) ** 2)), rel=1e-5)


# --- the store ----------------------------------------------------------------------------------


def test_the_store_holds_only_clients_with_state():
    store = ClientStates()
    assert store.blobs(range(5)) == {} and len(store) == 0
    store.accept(3, None)  # the default task's updates: nothing stored
    assert len(store) == 0
    store.accept(2, pack("t", {"c": 1}))
    store.accept(4, pack("t", 7))
    assert sorted(store.blobs([1, 2, 3, 4])) == [2, 4] and store.get(4) == 7
    saved = store.checkpoint()
    store.accept(4, pack("t", 8))
    store.accept(2, None)  # the task dropped client 2's state
    assert store.get(4) == 8 and store.get(2) is None and len(store) == 1
    again = ClientStates()
    again.restore(saved, lambda i: None)  # as a checkpoint file gives it back
    assert again.get(4) == 7 and again.get(2) == {"c": 1}


# --- bad tasks: one line naming the field --------------------------------------------------------


def _one_line(err: BaseException, *parts: str) -> None:
    msg = str(err)
    assert len(msg.splitlines()) == 1, msg
    for part in parts:
        assert part in msg, msg


@pytest.mark.parametrize(
    ("task", "params", "expected"),
    [
        ("classificaton", {}, "did you mean 'classification'?"),
        ("no_such_module:task", {}, "cannot import 'no_such_module'"),
        ("client_tasks:nope", {}, "has no attribute 'nope'"),
        ("client_tasks:Counting", {"scal": 1.0}, "client.task_params.scal is not a parameter"),
        ("client_tasks:Counting", {"scale": "big"}, "client.task_params.scale='big' must be"),
        ("client_tasks:not_a_task", {}, "returned dict, not a ClientTask"),
    ],
)
def test_a_bad_task_is_one_line_naming_the_field(task, params, expected):
    with pytest.raises(ConfigError) as info:
        _trainer(task, params)
    _one_line(info.value, "client.task", expected)


@pytest.mark.parametrize(("kind", "got"), [("shape", "shape (29,)"), ("dtype", "torch.float64")])
def test_a_gradient_of_the_wrong_shape_or_dtype_is_one_line(kind, got):
    uc = _trainer("client_tasks:BadGradient", {"kind": kind})
    with pytest.raises(RayflError) as info:
        uc.update(0, 0, get_flat(_model()))
    _one_line(info.value, "client.task='client_tasks:BadGradient'", got, "(30,) float32")


def test_a_state_that_cannot_be_checkpointed_is_one_line():
    uc = _trainer("client_tasks:UnpicklableState")
    with pytest.raises(RayflError) as info:
        uc.update(0, 0, get_flat(_model()))
    _one_line(info.value, "client.task='client_tasks:UnpicklableState'", "cannot be checkpointed")


def test_the_default_batch_transform_refuses_non_images():
    x = np.zeros((5, 8), dtype=np.float32)
    with pytest.raises(ConfigError) as info:
        build_task("classification", {}, DataSpec.of(x, 1, (), ()))
    _one_line(info.value, "client.task", "float32 samples of shape (8,)")
    # a task with its own batch() takes them
    assert isinstance(
        build_task("client_tasks:MeanSquaredError", {}, DataSpec.of(x, 1, (), ())), ClientTask
    )


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["client.task=client_tasks:nope"], "client.task='client_tasks:nope'"),
        (["client.task=nosuch.module:make"], "cannot import 'nosuch.module'"),
        (["client.task=client_tasks:Counting", "client.task_params={sale: 1}"], "scale"),
    ],
)
def test_the_config_checks_client_task_before_anything_runs(overrides, expected):
    from rayfl.config import load_config

    with pytest.raises(ConfigError) as info:
        load_config("tiny", overrides)
    _one_line(info.value, "client.task", expected)
    cfg = load_config(
        "tiny", ["client.task=client_tasks:Counting", "client.task_params={scale: 2}"]
    )
    assert cfg.client.task_params == {"scale": 2}
