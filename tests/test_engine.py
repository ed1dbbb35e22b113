"""The K-async engine on a real local Ray cluster: determinism, both clocks, fractional GPUs."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

import rayfl
from rayfl.clients.worker import make_pool, pool_size
from rayfl.config import load_config
from rayfl.runtime.data import load_data, put_data
from rayfl.speed import SpeedModel

TINY_CNN = [
    "model.name=paper_cnn",
    "data.num_clients=8",
    "aggregation.k=3",
    "iterations=12",
    "client.batch_size=8",
    "eval.every=6",
    "eval.max_samples=300",
]


def _run(tmp_path, name, overrides):
    return rayfl.run("tiny", overrides=overrides, output=tmp_path / name, progress=False)


def test_virtual_clock_is_deterministic_across_pool_sizes_and_repeats(ray_session, tmp_path):
    one = _run(tmp_path, "w1", [*TINY_CNN, "client.num_workers=1"])
    two = _run(tmp_path, "w2", [*TINY_CNN, "client.num_workers=2"])
    again = _run(tmp_path, "w2b", [*TINY_CNN, "client.num_workers=2"])
    assert one.summary["num_workers"] == 1 and two.summary["num_workers"] == 2
    assert one.weights.tobytes() == two.weights.tobytes() == again.weights.tobytes()
    other_seed = _run(tmp_path, "s1", [*TINY_CNN, "client.num_workers=2", "seed=1"])
    assert other_seed.weights.tobytes() != one.weights.tobytes()
    # The run never shuts down the Ray instance it did not start.
    assert ray_session.is_initialized()


def test_run_folder_contents(ray_session, tmp_path):
    result = _run(tmp_path, "r", ["iterations=20", "client.num_workers=2"])
    files = {p.name for p in result.run_dir.iterdir()}
    assert {
        "config.yaml",
        "metrics.parquet",
        "updates.parquet",
        "model.pt",
        "summary.json",
    } <= files
    metrics = pq.read_table(result.run_dir / "metrics.parquet").to_pandas()
    assert list(metrics["iteration"]) == list(range(20))
    for key in [
        "train/loss",
        "agg/k",
        "agg/lr",
        "agg/staleness_mean",
        "agg/selected",
        "agg/max_weight",
        "sys/wall_s",
        "sys/virtual_time",
    ]:
        assert metrics[key].notna().all(), key
    assert (np.diff(metrics["sys/virtual_time"]) >= 0).all()
    evals = metrics["eval/accuracy"].dropna()
    assert list(evals.index) == [9, 19]  # eval.every = 10 and the last iteration
    updates = pq.read_table(result.run_dir / "updates.parquet").to_pandas()
    assert len(updates) == 20 * 4
    assert (updates["staleness"] == updates["iteration"] - updates["version"]).all()
    np.testing.assert_allclose(updates.groupby("iteration")["weight"].sum(), 1.0, rtol=1e-6)
    # Every update in flight is computed on a version the server had made by then.
    assert (updates["version"] <= updates["iteration"]).all()
    assert result.summary["updates_aggregated"] == 80
    assert result.summary["status"] == "finished"
    assert 0.0 <= result.final_accuracy <= 1.0


def test_versions_are_freed_when_no_job_holds_them(ray_session, tmp_path):
    result = _run(tmp_path, "v", ["iterations=30", "client.num_workers=2"])
    metrics = result.metrics.to_pandas()
    held = metrics["agg/versions_held"]
    # At most one version per client plus the current one, never one per iteration.
    assert held.max() <= result.config.data.num_clients + 1
    assert held.iloc[-1] < 30


def test_real_clock_slow_clients_arrive_late(ray_session, tmp_path):
    overrides = [
        "clock.kind=real",
        "data.num_clients=6",
        "aggregation.k=2",
        "iterations=24",
        "clock.straggler_fraction=0.5",
        "clock.straggler_slowdown=20",
        "clock.speed_low=0.001",
        "clock.speed_high=0.001",
        "clock.time_scale=0.5",  # fast jobs ~0.01-0.03 s of delay, stragglers ~0.2-0.6 s
        "client.num_workers=2",
        "eval.every=100",
    ]
    result = _run(tmp_path, "real", overrides)
    cfg = result.config
    speed = SpeedModel(cfg.clock, 6, cfg.client.batch_size, 4, cfg.seed)
    slow = set(np.flatnonzero(speed.is_straggler).tolist())
    assert len(slow) == 3
    updates = pq.read_table(result.run_dir / "updates.parquet").to_pandas()
    updates["slow"] = updates["client_id"].isin(slow)
    by = updates.groupby("slow")["staleness"].mean()
    counts = updates.groupby("slow").size()
    assert by[True] > by[False] + 1.0, by
    assert counts[False] > counts[True], counts  # fast clients report more often


def test_fractional_gpus_pack_four_workers_per_gpu(ray_session, tmp_path):
    cfg = load_config("tiny", ["client.num_gpus=0.25", "client.num_cpus=0.25"])
    assert pool_size(cfg, ray_session.cluster_resources()) == 4
    # Ask for five: four are scheduled on the one (pretend) GPU, the fifth waits.
    five = load_config(
        "tiny", ["client.num_gpus=0.25", "client.num_cpus=0.25", "client.num_workers=5"]
    )
    data = put_data(*load_data(five))
    workers = make_pool(five, max_concurrency=4)
    try:
        refs = [w.attach.remote(data) for w in workers]
        ready, pending = ray_session.wait(refs, num_returns=4, timeout=120)
        assert len(ready) == 4 and len(pending) == 1
        late, _ = ray_session.wait(pending, timeout=3)
        assert not late  # the fifth finds no GPU share left
        infos = ray_session.get(ready)
        assert all(i["gpu_ids"] == ["0"] for i in infos)
        assert all(i["device"] == "cpu" for i in infos)  # no CUDA here: CPU fallback
    finally:
        for w in workers:
            ray_session.kill(w)
    # A whole run with fractional GPUs sizes its pool to 4 and trains.
    result = _run(tmp_path, "gpu", ["client.num_gpus=0.25", "client.num_cpus=0.25", "iterations=8"])
    assert result.summary["num_workers"] == 4
