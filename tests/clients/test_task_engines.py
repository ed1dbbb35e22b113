"""Client tasks from a user's module (tests/fixtures/client_tasks.py) on both real engines: the
per-client state changes the updates, is kept only for accepted updates, survives a checkpoint
and resume and a killed worker bit for bit; a non-image regression task runs; a broken task
fails the run in one line naming client.task."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import numpy as np
import psutil
import pyarrow.parquet as pq
import pytest

import rayfl
from rayfl.errors import RayflError
from rayfl.runtime.checkpoint import read_checkpoint

# The config is checked in this process too: client.task must import here as on the workers.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures"))

ASYNC = ["client.num_workers=2", "iterations=30", "eval.every=10"]
SYNC = [
    "data.num_clients=20",
    "model.hidden=[16]",
    "eval.max_samples=500",
    "client.num_workers=2",
    "client.num_cpus=0.5",
    "iterations=6",
]
ENGINES = {"kasync": ("tiny", ASYNC), "sync": ("random", SYNC)}
COUNTING = ["client.task=client_tasks:Counting", "client.task_params={scale: 0.5}"]


def control_variate(beta: float) -> list[str]:
    return ["client.task=client_tasks:ControlVariate", f"client.task_params={{beta: {beta}}}"]


def _run(engine, tmp_path, name, *extra, **kwargs):
    preset, base = ENGINES[engine]
    return rayfl.run(
        preset, overrides=[*base, *extra], output=tmp_path / name, progress=False, **kwargs
    )


def _states(run_dir):
    return dict(read_checkpoint(run_dir)["client_states"])  # the states, stored without pickle


class Stop(KeyboardInterrupt):
    """Ctrl-C, as the driver sees it."""


@pytest.mark.parametrize("engine", ["kasync", "sync"])
def test_the_state_changes_the_updates_and_is_kept_for_accepted_ones(ray_session, tmp_path, engine):
    plain = _run(engine, tmp_path, "plain")
    # The hooks run and a (P,) control variate travels with every job, but beta = 0 ignores it:
    # the same bytes as the shipped task. With beta > 0 the state changes the updates.
    ignored = _run(engine, tmp_path, "ignored", *control_variate(0.0), "checkpoint_every=100")
    assert ignored.weights.tobytes() == plain.weights.tobytes()
    used = _run(engine, tmp_path, "used", *control_variate(0.5))
    assert not np.array_equal(used.weights, plain.weights)
    states = _states(ignored.run_dir)
    assert states and all(c.shape == plain.weights.shape for c in states.values())

    # A counter of accepted updates: client 3's are all broken (K-async rejects them, so its
    # counter is never kept); every other client's count equals its rows in updates.parquet.
    faults = ["client.faults={client_ids: [3], kind: nan}"] if engine == "kasync" else []
    counted = _run(engine, tmp_path, "counted", *COUNTING, *faults, "checkpoint_every=100")
    updates = pq.read_table(counted.run_dir / "updates.parquet").to_pandas()
    expected = updates["client_id"].value_counts().to_dict()
    assert _states(counted.run_dir) == expected
    if engine == "kasync":
        assert 3 not in expected and counted.summary["rejected_updates"]
    assert max(expected.values()) > 1  # some client's later updates were scaled by its count


@pytest.mark.parametrize("engine", ["kasync", "sync"])
def test_a_resumed_run_with_client_state_ends_bit_identical(ray_session, tmp_path, engine):
    task = [*control_variate(0.5), "checkpoint_every=4"]
    unbroken = _run(engine, tmp_path, "unbroken", *task)

    def ctrl_c(rows):
        if rows[-1]["iteration"] >= 2:
            raise Stop

    with pytest.raises(Stop):
        _run(engine, tmp_path, "broken", *task, callback=ctrl_c)
    broken = tmp_path / "broken"
    assert _states(broken)  # the store is in the checkpoint
    resumed = rayfl.run(resume=broken, progress=False)
    assert resumed.weights.tobytes() == unbroken.weights.tobytes()


def _worker_pids():
    pids = set()
    for p in psutil.Process().children(recursive=True):
        try:
            if " ".join(p.cmdline()).startswith("ray::ClientWorker"):
                pids.add(p.pid)
        except psutil.Error:
            continue
    return pids


@pytest.mark.parametrize("engine", ["kasync", "sync"])
def test_a_killed_worker_changes_nothing_with_client_state(ray_session, tmp_path, engine):
    """Every worker of the run dies after iteration (round) 2: their jobs in flight, with the
    states they were sent, are re-run elsewhere; the states live with the server."""
    task = control_variate(0.5)
    clean = _run(engine, tmp_path, "clean", *task)
    before = _worker_pids()
    killed: list[int] = []

    def kill_all(rows):
        if not killed and rows[-1]["iteration"] >= 2:
            mine = sorted(_worker_pids() - before)
            assert mine, "no worker process of this run found"
            for pid in mine:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

    hit = _run(engine, tmp_path, "hit", *task, callback=kill_all)
    assert killed
    assert hit.weights.tobytes() == clean.weights.tobytes()


@pytest.mark.parametrize("engine", ["kasync", "sync"])
def test_a_regression_task_on_float_features(ray_session, tmp_path, engine):
    data = [
        "data.dataset=client_tasks:regression",
        "data.dataset_params={n: 600, features: 8}",
        "data.partition=client_tasks:split",
        "model.name=mlp",
        "model.hidden=[16]",
        "eval.every=1",
    ]
    result = _run(engine, tmp_path, "mse", *data, "client.task=client_tasks:MeanSquaredError")
    metrics = result.metrics.to_pandas()
    losses = metrics["eval/loss"].dropna().tolist()
    assert losses and all(np.isfinite(losses)) and losses[-1] < losses[0]
    # No notion of correct: NaN, not 0 (the rounds engine leaves NaN cells out of its rows).
    assert metrics.get("eval/accuracy", metrics["eval/loss"] * np.nan).isna().all()
    # The shipped task would normalise images: a one-line error before any worker computes.
    with pytest.raises(RayflError) as info:
        _run(engine, tmp_path, "images", *data)
    assert "client.task: the default batch transform normalises uint8" in str(info.value)
    assert len(str(info.value).splitlines()) == 1


@pytest.mark.parametrize(
    ("engine", "task", "expected"),
    [
        ("kasync", ["client.task=client_tasks:not_a_task"], "returned dict, not a ClientTask"),
        ("sync", ["client.task=client_tasks:not_a_task"], "returned dict, not a ClientTask"),
        ("kasync", ["client.task=client_tasks:BadGradient"], "gradient() returned a torch.float32"),
        (
            "sync",
            ["client.task=client_tasks:BadGradient", "client.task_params={kind: dtype}"],
            "gradient() returned a torch.float64",
        ),
        ("kasync", ["client.task=client_tasks:UnpicklableState"], "cannot be checkpointed"),
        ("sync", ["client.task=client_tasks:UnpicklableState"], "cannot be checkpointed"),
    ],
)
def test_a_broken_task_fails_the_run_in_one_line(ray_session, tmp_path, engine, task, expected):
    with pytest.raises(RayflError) as info:
        _run(engine, tmp_path, "bad", *task)
    message = str(info.value)
    assert len(message.splitlines()) == 1, message
    assert "client.task" in message and expected in message
    summary = json.loads((tmp_path / "bad" / "summary.json").read_text())
    assert summary["status"] == "failed"
