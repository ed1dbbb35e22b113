"""examples/rayfl_extras, a user package outside rayfl/: each extension against numbers worked out
by hand, and its experiment through the real engine (a resumed run equals an unbroken one, so
the rule's and the optimizer's own state are checkpointed). The same experiment on the 3-node
cluster, with the package shipped by runtime_env: tests/cluster/test_multinode.py."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow.parquet as pq
import pytest
from rayfl_extras.optimizers import server_momentum
from rayfl_extras.partitioners import quantity_skew
from rayfl_extras.rules import adaptive_clip, trimmed_mean
from rayfl_extras.tasks import ClientMomentum

import rayfl
from rayfl.aggregation import start_step
from rayfl.config import load_config
from rayfl.errors import ConfigError
from rayfl.runtime.checkpoint import read_checkpoint

EXPERIMENT = "examples/experiment.yaml"
W = np.zeros(2, np.float32)


def step(updates, lr=0.1):
    return start_step(
        0, np.asarray(updates, np.float32), [0] * len(updates), [1.0] * len(updates), lr
    )


def test_adaptive_clip_by_hand():
    rule = adaptive_clip(quantile=0.5, decay=0.5, factor=1.0)
    # norms 5, 10, 20 -> median 10: the bound is 10, [12, 16] (norm 20) is halved
    out, state = rule.update(step([[3, 4], [6, 8], [12, 16]]), rule.init(W), W)
    np.testing.assert_allclose(out.updates, [[3, 4], [6, 8], [6, 8]], rtol=1e-6)
    assert state.bound == 10.0 and out.metrics["extras/clipped"] == 1.0
    # next iteration: norms 1, 1, 1 -> bound 0.5 * 10 + 0.5 * 1 = 5.5: nothing clipped
    out, state = rule.update(step([[1, 0], [0, 1], [0.6, 0.8]]), state, W)
    assert state.bound == pytest.approx(5.5) and out.metrics["extras/clip_bound"] == 5.5
    assert out.metrics["extras/clipped"] == 0.0


def test_trimmed_mean_by_hand():
    rule = trimmed_mean(trim=0.2)
    # K = 5, cut 1 at each end per coordinate: x: 1 2 3 4 100 -> mean(2, 3, 4) = 3;
    # y: -50 0 1 2 3 -> mean(0, 1, 2) = 1
    out, _ = rule.update(step([[1, 3], [100, 0], [2, -50], [3, 1], [4, 2]]), (), W)
    np.testing.assert_allclose(out.direction, [3.0, 1.0], rtol=1e-6)
    assert out.metrics["extras/trimmed"] == 2.0


def test_server_momentum_by_hand():
    opt = server_momentum(beta=0.5)
    w = np.array([1.0, 1.0], np.float32)
    s = dataclasses.replace(step([[0, 0]], lr=0.1), direction=np.array([2.0, 0.0], np.float32))
    w1, state = opt.apply(s, opt.init(w), w)  # v = 2, 0 -> w = 1 - 0.2, 1
    np.testing.assert_allclose(w1, [0.8, 1.0], rtol=1e-6)
    w2, state = opt.apply(s, state, w1)  # v = 0.5 * 2 + 2 = 3 -> w = 0.8 - 0.3
    np.testing.assert_allclose(w2, [0.5, 1.0], rtol=1e-6)
    assert w2.dtype == np.float32


def test_server_momentum_runs_on_torch_tensors_too():
    """The example declares both backends (aggregation.backend): on tensors it gives the same
    numbers and keeps its state on the params' device."""
    import torch

    opt = server_momentum(beta=0.5)
    assert opt.backends == ("numpy", "torch")
    w = torch.tensor([1.0, 1.0])
    s = dataclasses.replace(step([[0, 0]], lr=0.1), direction=torch.tensor([2.0, 0.0]))
    w1, state = opt.apply(s, opt.init(w), w)
    w2, state = opt.apply(s, state, w1)
    assert isinstance(w2, torch.Tensor) and isinstance(state.velocity, torch.Tensor)
    np.testing.assert_allclose(w2.numpy(), [0.5, 1.0], rtol=1e-6)


def test_client_momentum_by_hand():
    import torch

    from rayfl.clients.task import TaskContext

    task = ClientMomentum(beta=0.5)
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(2.0)
    params = list(model.parameters())
    x, y = torch.tensor([[1.0]]), torch.tensor([[0.0]])
    task.loss = lambda m, i, t: ((m(i) - t) ** 2).mean()  # (w x - y)^2: gradient 2 w x^2 = 4
    state = task.init_state(0, np.zeros(1, np.float32))
    ctx = TaskContext(
        0, 0, np.array([2.0], np.float32), np.array([2.0], np.float32), 0.1, torch.device("cpu")
    )
    g, loss = task.gradient(model, params, x, y, ctx)  # 4 + 0.5 * 2
    assert g.tolist() == [5.0] and loss == 4.0
    new = task.finish(ctx, torch.tensor([2.0]), torch.tensor([1.0]), 2)  # (2 - 1) / (2 * 0.1)
    np.testing.assert_allclose(new, [5.0])
    assert state.tolist() == [0.0] and new.dtype == np.float32


def test_quantity_skew_sizes():
    labels = np.arange(1000) % 10
    p = quantity_skew(labels, 20, np.random.default_rng(0), sigma=1.0, min_size=10)
    sizes = p.sizes()
    assert p.num_clients == 20 and sizes.min() >= 10 and sizes.sum() <= 1000
    assert sizes.max() > 3 * sizes.min()  # skewed
    assert len(np.unique(p.indices)) == p.indices.size  # no sample twice


def test_the_experiment_config_names_the_user_parts():
    cfg = load_config(EXPERIMENT)
    assert cfg.aggregation.rules[0] == {
        "rayfl_extras.rules:adaptive_clip": {"quantile": 0.5, "decay": 0.9, "factor": 2.0}
    }
    with pytest.raises(ConfigError, match=r"adaptive_clip\.quantil is not a parameter"):
        load_config(EXPERIMENT, ["aggregation.rules.0.quantil=0.3"])
    with pytest.raises(ConfigError, match=r"server_momentum\.beta=.*must be float"):
        load_config(
            EXPERIMENT,
            ["aggregation.optimizer={rayfl_extras.optimizers:server_momentum: {beta: x}}"],
        )


def test_user_parts_run_and_resume_bit_identically(ray_session, tmp_path):
    overrides = ["iterations=16", "checkpoint_every=8", "client.num_workers=2", "eval.every=8"]
    clean = rayfl.run(EXPERIMENT, overrides=overrides, output=tmp_path / "clean", progress=False)
    metrics = pq.read_table(clean.run_dir / "metrics.parquet").to_pandas()
    assert (metrics["extras/trimmed"] == 2.0).all()  # the user's aggregator ran (K = 5, trim 0.2)
    assert metrics["extras/clip_bound"].nunique() > 1  # its state moved
    held = read_checkpoint(clean.run_dir)["client_states"]  # the task's per-client momentum
    assert len(held) > 0
    # Resume from the checkpoint at iteration 8: clip bound and velocity come back from it.
    resumed_dir = tmp_path / "resumed"
    half = rayfl.run(
        EXPERIMENT, overrides=[*overrides[:1], "iterations=8", *overrides[1:]],
        output=resumed_dir, progress=False,
    )  # fmt: skip
    assert half.summary["iterations"] == 8
    resumed = rayfl.run(resume=resumed_dir, overrides=["iterations=16"], progress=False)
    assert resumed.weights.tobytes() == clean.weights.tobytes()
    again = pq.read_table(resumed_dir / "metrics.parquet").to_pandas()
    assert again["extras/clip_bound"].tolist() == metrics["extras/clip_bound"].tolist()


SYNC_EXPERIMENT = "examples/sync-experiment.yaml"


def test_the_user_selector_queries_the_clients_and_resumes(ray_session, tmp_path):
    overrides = ["iterations=4", "client.num_workers=2", "checkpoint_every=2"]
    clean = rayfl.run(SYNC_EXPERIMENT, overrides=overrides, output=tmp_path / "a", progress=False)
    rounds = pq.read_table(clean.run_dir / "rounds.parquet").to_pylist()
    assert [r["selector"] for r in rounds] == ["rayfl_extras.selectors:utility_bandit"] * 4
    for r in rounds:  # the clients' utilities came through the selector's own query
        assert len(r["utilities"]) == 20 and all(u > 0 for u in r["utilities"])
        assert len(r["selected"]) == 4 == len(set(r["selected"]))
    picked = [c for r in rounds for c in r["selected"]]
    assert len(set(picked)) > 4  # the exploration bonus spreads the picks (state n_i at work)
    half = tmp_path / "b"
    rayfl.run(
        SYNC_EXPERIMENT, overrides=[*overrides[1:], "iterations=2"], output=half, progress=False
    )
    resumed = rayfl.run(resume=half, overrides=["iterations=4"], progress=False)
    assert resumed.weights.tobytes() == clean.weights.tobytes()
    again = pq.read_table(half / "rounds.parquet").to_pylist()
    assert repr(again) == repr(rounds)  # repr: NaN (gain before an evaluation) equals itself
