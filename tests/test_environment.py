"""summary.json's ``environment``: what a run's floats depend on, on the driver and on every
client worker (issue: reproducibility across machines)."""

from __future__ import annotations

import json

import pytest

import rayfl
from rayfl.environment import by_worker, fingerprint

KEYS = {"torch", "numpy", "numpy_blas", "cpu_model", "cpu_flags_sha256", "torch_threads"}


@pytest.mark.parametrize("preset", ["tiny", "fedavg"])
def test_the_summary_records_the_driver_and_each_workers_kernels(preset, ray_session, tmp_path):
    over = ["iterations=2", "client.num_workers=2", "model.hidden=[8]", "eval.max_samples=100"]
    if preset == "fedavg":
        over += ["data.num_clients=10", "selection.epochs=1"]
    run = rayfl.run(preset, overrides=over, output=tmp_path / preset, progress=False)
    env = json.loads((run.run_dir / "summary.json").read_text())["environment"]
    assert set(env) >= KEYS
    workers = env["workers"]
    assert sorted(i for group in workers for i in group["workers"]) == [0, 1]
    for group in workers:
        assert set(group) >= KEYS
        assert group["torch_threads"] == 1  # client.num_cpus = 1: one thread per worker


def test_workers_with_the_same_kernels_are_one_group():
    mine = fingerprint()
    other = {**mine, "torch_threads": mine["torch_threads"] + 1}
    infos = [{"index": 0, "environment": mine}, {"index": 1, "environment": mine}]
    infos.append({"index": 2, "environment": other})
    groups = by_worker(infos)
    assert [g["workers"] for g in groups] == [[0, 1], [2]]
