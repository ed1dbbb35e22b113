"""Batched client compute (client.batched, rayfl.clients.batched) without Ray: on CPU, forced
on, it gives the one-job path's updates within float tolerance; it refuses, or falls back from,
what it cannot map; the config rejects bad values naming the field."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rayfl.clients import batched as batched_module
from rayfl.clients.batched import BatchedJobs, JobArgs, batched_jobs, unsupported
from rayfl.clients.local import LocalTrainer
from rayfl.clients.shipped import build_task
from rayfl.clients.task import ClientTask, DataSpec
from rayfl.config import ModelConfig, load_config
from rayfl.errors import ConfigError
from rayfl.models import build_model, get_flat

MEAN, STD = (0.1307,), (0.3081,)
SIZES = (20, 20, 20, 20, 3)  # samples per client; the last holds fewer than B = 4


def _world():
    """uint8 28x28 images of 5 clients (sizes SIZES), 10 classes."""
    rng = np.random.default_rng(7)
    n = sum(SIZES)
    x = rng.integers(0, 256, size=(n, 1, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 10, size=n).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(SIZES)]).astype(np.int64)
    return x, y, np.arange(n, dtype=np.int64), offsets


def _trainer(model="mlp", task: ClientTask | None = None, local_steps=1, lr=0.05):
    x, y, indices, offsets = _world()
    spec = DataSpec.of(x, 10, MEAN, STD)
    if task is None:
        task = build_task("classification", {}, spec)
    else:
        task.setup(spec)
    net = build_model(ModelConfig(model, hidden=(32,)), (1, 28, 28), 10, seed=0)
    return LocalTrainer(
        task,
        "classification",
        net,
        x,
        y,
        indices,
        offsets,
        batch_size=4,
        local_steps=local_steps,
        local_lr=lr,
        seed=11,
    )


def _versions(trainer, count):
    """``count`` distinct weight arrays near the initial model (stand-ins for w_0, w_1, ...)."""
    w = get_flat(trainer.model)
    rng = np.random.default_rng(3)
    return [w] + [w + rng.normal(0, 0.01, w.shape).astype(np.float32) for _ in range(count - 1)]


def _assert_same_updates(trainer, jobs):
    got = BatchedJobs(trainer, max_jobs=16).compute(jobs)
    for job, result in zip(jobs, got, strict=True):
        want = trainer.update(*job)
        assert result.vector.dtype == np.float32 and result.vector.shape == want.vector.shape
        scale = np.abs(want.vector).max()
        np.testing.assert_allclose(result.vector, want.vector, rtol=1e-4, atol=1e-5 * scale)
        assert result.loss == pytest.approx(want.loss, rel=1e-5)
        assert result.state is None and result.report is None


@pytest.mark.parametrize("model", ["mlp", "paper_cnn"])
@pytest.mark.parametrize("local_steps", [1, 3])
def test_same_version_matches_one_job_path(model, local_steps):
    trainer = _trainer(model, local_steps=local_steps)
    (w,) = _versions(trainer, 1)
    # Five clients on one version (one (P,) copy), the last with a smaller mini-batch of 3.
    _assert_same_updates(trainer, [JobArgs(c, 4, w) for c in range(5)])


@pytest.mark.parametrize("model", ["mlp", "paper_cnn"])
@pytest.mark.parametrize("local_steps", [1, 3])
def test_different_versions_match_one_job_path(model, local_steps):
    trainer = _trainer(model, local_steps=local_steps)
    ws = _versions(trainer, 3)
    jobs = [JobArgs(c, v, ws[v]) for c, v in [(0, 0), (1, 2), (2, 1), (3, 2), (4, 0), (0, 1)]]
    _assert_same_updates(trainer, jobs)


def test_split_into_max_jobs_keeps_order():
    trainer = _trainer(local_steps=2)
    ws = _versions(trainer, 2)
    jobs = [JobArgs(c % 4, c, ws[c % 2]) for c in range(7)]
    whole = BatchedJobs(trainer, max_jobs=16).compute(jobs)
    split = BatchedJobs(trainer, max_jobs=3).compute(jobs)
    for a, b in zip(whole, split, strict=True):
        np.testing.assert_allclose(a.vector, b.vector, rtol=1e-5, atol=1e-7)


# --- what cannot be batched ------------------------------------------------------------------


class SmoothedLoss(ClientTask):
    """A user's loss declared batchable: label-smoothed cross-entropy."""

    batchable = True

    def loss(self, model, inputs, targets):
        return F.cross_entropy(model(inputs), targets, label_smoothing=0.1)


class UndeclaredLoss(SmoothedLoss):
    batchable = False


class ItemLoss(ClientTask):
    """Declares batchable, but reads a value out of the tensor: vmap cannot map that."""

    batchable = True

    def loss(self, model, inputs, targets):
        out = model(inputs)
        return F.cross_entropy(out, targets) * (2.0 if out.sum().item() > 0 else 1.0)


def test_a_declared_batchable_loss_is_batched():
    trainer = _trainer(task=SmoothedLoss(), local_steps=2)
    jobs, path = batched_jobs(trainer, "on", 16)
    assert path == "batched" and jobs is not None
    ws = _versions(trainer, 2)
    _assert_same_updates(trainer, [JobArgs(c, c, ws[c % 2]) for c in range(4)])


def test_unsupported_tasks_and_models_say_why():
    assert unsupported(_trainer().task, _trainer().model) is None
    fedprox = build_task("fedprox", {"mu": 0.1}, DataSpec.of(_world()[0], 10, MEAN, STD))
    assert "overrides gradient()" in unsupported(fedprox, _trainer().model)
    assert "batchable" in unsupported(UndeclaredLoss(), _trainer().model)
    with_bn = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(784, 8), torch.nn.BatchNorm1d(8)
    )
    assert "buffers" in unsupported(ClientTask(), with_bn)


def test_forced_on_names_the_field_and_the_reason():
    trainer = _trainer(
        task=build_task("fedprox", {"mu": 0.1}, DataSpec.of(_world()[0], 10, MEAN, STD))
    )
    with pytest.raises(
        ConfigError, match=r"client\.batched=on, but client\.task overrides gradient"
    ):
        batched_jobs(trainer, "on", 16)
    with pytest.raises(ConfigError, match=r"client\.batched=on, but torch\.func could not map"):
        batched_jobs(_trainer(task=ItemLoss()), "on", 16)


def test_auto_is_off_on_cpu_and_falls_back_with_an_info_line(monkeypatch, caplog):
    trainer = _trainer()
    assert batched_jobs(trainer, "auto", 16) == (
        None,
        "one job at a time: client.batched=auto on a CPU worker",
    )
    assert batched_jobs(trainer, "off", 16)[0] is None
    # As on a CUDA worker: auto batches what it can and explains what it cannot.
    monkeypatch.setattr(batched_module, "wanted", lambda mode, device: mode != "off")
    assert batched_jobs(trainer, "auto", 16)[1] == "batched"
    with caplog.at_level(logging.INFO, logger="rayfl.clients.batched"):
        jobs, path = batched_jobs(_trainer(task=ItemLoss()), "auto", 16)
    assert jobs is None and path.startswith("one job at a time: torch.func could not map")
    assert "client.batched=auto: computing one job at a time" in caplog.text


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("client.batched=maybe", "client.batched='maybe' is not one of auto, on, off"),
        ("client.batched=3", "client.batched: 3 has the wrong type"),
        ("client.max_batch_jobs=0", "client.max_batch_jobs=0 must be > 0"),
    ],
)
def test_bad_config_values_name_the_field(override, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        load_config("tiny", [override])


def test_yaml_on_and_off_are_the_modes():
    assert load_config("tiny", ["client.batched=on"]).client.batched == "on"
    assert load_config("tiny", ["client.batched=false"]).client.batched == "off"
    assert load_config("tiny").client.batched == "auto"


# --- through the engine -----------------------------------------------------------------------


def test_a_run_with_batched_workers_gives_the_same_model(ray_session, tmp_path):
    import json

    import rayfl

    base = ["client.num_workers=2", "iterations=8", "eval.every=8", "model.name=paper_cnn"]
    base += ["client.local_steps=2", "eval.max_samples=200"]
    runs = {
        mode: rayfl.run(
            "tiny",
            overrides=[*base, f"client.batched={mode}"],
            output=tmp_path / mode,
            progress=False,
        )
        for mode in ("off", "on")
    }
    off, on = runs["off"].weights, runs["on"].weights
    np.testing.assert_allclose(on, off, rtol=1e-3, atol=1e-5 * np.abs(off).max())
    for mode, path in (("off", "one job at a time: client.batched=off"), ("on", "batched")):
        env = json.loads((runs[mode].run_dir / "summary.json").read_text())["environment"]
        assert [g["client_compute"] for g in env["workers"]] == [path]


def test_gpu_helpers_are_no_ops_on_cpu_and_the_oom_line_names_the_fields():
    from rayfl.clients.gpu import cap_memory, out_of_memory_as_error, out_of_memory_message
    from rayfl.config import ClientConfig

    cpu = torch.device("cpu")
    cap_memory(cpu, 0.25)  # nothing to cap
    cfg = ClientConfig(num_gpus=0.25, batch_size=16, max_batch_jobs=8)
    with pytest.raises(torch.cuda.OutOfMemoryError), out_of_memory_as_error(cpu, cfg, 8):
        raise torch.cuda.OutOfMemoryError("not a CUDA worker: raised as it came")
    line = out_of_memory_message(cfg, 8, 140.0)
    assert "\n" not in line and line.startswith("client.num_gpus=0.25: the worker's 35.0 GiB")
    assert "8 job(s) at once" in line and "client.max_batch_jobs=8" in line
