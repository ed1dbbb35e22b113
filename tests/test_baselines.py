"""The baselines on a real Ray, end to end: every new preset checkpoints and resumes bit-identically,
the server optimizers run in both engines, bounded concurrency bounds, DP refuses what it cannot
account for, and a diverging run stops in one line with its results kept."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pyarrow.parquet as pq
import pytest

import rayfl
from rayfl.cli import main

SMALL = ["client.num_workers=2", "model.hidden=[16]", "eval.max_samples=200"]
SYNC = [*SMALL, "data.num_clients=20", "selection.epochs=1", "iterations=6", "eval.every=2"]
ASYNC = [*SMALL, "data.num_clients=20", "iterations=24", "eval.every=8", "model.name=mlp"]
# K-async SCAFFOLD: the broadcast c travels with every version, and a checkpoint holds each
# live version's
KASYNC_SCAFFOLD = [
    *ASYNC,
    "client.task=scaffold",
    "client.local_steps=2",
    "aggregation.rules=[scaffold, mean, weighted_sum, constant_lr]",
]
CASES = {
    "fedavg": ("fedavg", SYNC),
    "fedadagrad": ("fedadagrad", SYNC),
    "fedyogi": ("fedyogi", SYNC),
    "fedadam": ("fedadam", SYNC),
    "fedavgm": ("fedavgm", SYNC),
    "fedprox": ("fedprox", SYNC),
    "scaffold": ("scaffold", SYNC),
    "dp-fedavg": ("dp-fedavg", [*SYNC, "data.num_clients=100", "selection.k_fraction=0.2"]),
    "fedbuff": ("fedbuff", [*ASYNC, "clock.concurrency=8", "aggregation.k=4"]),
    "fedasync": ("fedasync", ASYNC),
    "kasync-scaffold": ("kasync", KASYNC_SCAFFOLD),
}


class Stop(KeyboardInterrupt):
    """Ctrl-C, as the driver sees it."""


@pytest.mark.parametrize("case", sorted(CASES))
def test_baseline_resumes_bit_identically(case, ray_session, tmp_path):
    preset, overrides = CASES[case]
    overrides = [*overrides, "checkpoint_every=2"]
    clean = rayfl.run(preset, overrides=overrides, output=tmp_path / "clean", progress=False)
    assert np.isfinite(clean.weights).all()
    total = len(clean.metrics)

    def ctrl_c(rows):
        if rows[-1]["iteration"] >= total // 2:
            raise Stop

    broken = tmp_path / "broken"
    with pytest.raises(Stop):
        rayfl.run(preset, overrides=overrides, output=broken, progress=False, callback=ctrl_c)
    resumed = rayfl.run(preset, resume=broken, progress=False)
    assert resumed.weights.tobytes() == clean.weights.tobytes()
    a = clean.metrics.to_pandas()
    b = pq.read_table(broken / "metrics.parquet").to_pandas()
    for column in [c for c in a.columns if c.startswith(("agg/", "dp/", "eval/", "train/"))]:
        assert a[column].tolist() == pytest.approx(b[column].tolist(), nan_ok=True), column


def _worker_pids() -> set[int]:
    pids = set()
    for p in psutil.Process().children(recursive=True):
        try:
            if " ".join(p.cmdline()).startswith("ray::ClientWorker"):
                pids.add(p.pid)
        except psutil.Error:
            continue
    return pids


@pytest.mark.parametrize("case", ["scaffold", "kasync-scaffold"])
def test_scaffold_control_variates_survive_killed_workers(case, ray_session, tmp_path):
    """Every worker dies mid-run: the c_i live in the server's store and travel with the jobs,
    c with the versions, so the re-run jobs give the same bytes."""
    preset, overrides = CASES[case]
    clean = rayfl.run(preset, overrides=overrides, output=tmp_path / "clean", progress=False)
    before = _worker_pids()
    killed: list[int] = []

    def kill_all(rows):
        if not killed and rows[-1]["iteration"] >= 2:
            for pid in sorted(_worker_pids() - before):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

    hit = rayfl.run(
        preset, overrides=overrides, output=tmp_path / "hit", progress=False, callback=kill_all
    )
    assert killed
    assert hit.weights.tobytes() == clean.weights.tobytes()


def test_dp_fedavg_records_its_epsilon_every_round_and_in_the_summary(ray_session, tmp_path):
    overrides = [*SYNC, "data.num_clients=100", "selection.k_fraction=0.2"]
    run = rayfl.run("dp-fedavg", overrides=overrides, output=tmp_path / "dp", progress=False)
    eps = run.metrics.to_pandas()["dp/epsilon"].tolist()
    assert len(eps) == 6 and all(np.diff(eps) > 0)  # privacy spent grows every round
    assert run.summary["privacy"]["epsilon"] == eps[-1]
    assert run.summary["privacy"]["delta"] == pytest.approx(1 / 100**1.1)


def test_server_optimizers_run_in_the_k_async_engine(ray_session, tmp_path):
    """With momentum 0, FedAvgM is SGD: same bytes as the shipped sgd in K-async; FedAdam moves
    the model differently."""
    runs = {}
    for name, optimizer in [
        ("sgd", "sgd"),
        ("m0", "{fedavgm: {momentum: 0.0}}"),
        ("adam", "{fedadam: {tau: 0.01}}"),
    ]:
        overrides = [*ASYNC, "iterations=10", f"aggregation.optimizer={optimizer}"]
        runs[name] = rayfl.run(
            "kasync", overrides=overrides, output=tmp_path / name, progress=False
        )
    assert runs["m0"].weights.tobytes() == runs["sgd"].weights.tobytes()
    assert not np.allclose(runs["adam"].weights, runs["sgd"].weights)


def test_fedavgm_without_momentum_is_fedavg_in_rounds(ray_session, tmp_path):
    """The pseudo-gradient path (w(t) - eta_g * mean Delta_i) gives FedAvg's average up to float32
    rounding."""
    plain = rayfl.run("fedavg", overrides=SYNC, output=tmp_path / "avg", progress=False)
    m0 = [*SYNC, "aggregation.optimizer={fedavgm: {momentum: 0.0}}", "aggregation.lr=1.0"]
    chained = rayfl.run("fedavg", overrides=m0, output=tmp_path / "m0", progress=False)
    np.testing.assert_allclose(chained.weights, plain.weights, rtol=0, atol=1e-4)


def in_flight_per_iteration(run_dir) -> pd.Series:
    """From updates.parquet: how many jobs were in flight at each iteration (a job on version v
    aggregated at iteration i was training during iterations v..i)."""
    updates = pq.read_table(run_dir / "updates.parquet").to_pandas()
    last = int(updates["iteration"].max())
    counts = np.zeros(last + 1, dtype=np.int64)
    for v, i in zip(updates["version"], updates["iteration"], strict=True):
        counts[v : i + 1] += 1
    return pd.Series(counts)


@pytest.mark.parametrize("clock", ["virtual", "real"])
def test_bounded_concurrency_keeps_at_most_c_clients_training(clock, ray_session, tmp_path):
    overrides = [*ASYNC, "iterations=30", "aggregation.k=3", f"clock.kind={clock}"]
    bounded = rayfl.run(
        "fedbuff",
        overrides=[*overrides, "clock.concurrency=6"],
        output=tmp_path / "c6",
        progress=False,
    )
    counts = in_flight_per_iteration(bounded.run_dir)
    assert counts.max() <= 6
    clients = pq.read_table(bounded.run_dir / "updates.parquet").to_pandas()["client_id"]
    assert clients.nunique() > 6  # idle clients are drawn in as others report
    if clock == "virtual":  # every client always trains: up to N jobs in flight
        unbounded = rayfl.run(
            "fedbuff",
            overrides=[*overrides, "clock.concurrency=null"],
            output=tmp_path / "all",
            progress=False,
        )
        assert in_flight_per_iteration(unbounded.run_dir).max() > 6


@pytest.mark.parametrize(("preset", "base"), [("fedavgm", SYNC), ("kasync", ASYNC)])
def test_a_diverging_run_stops_in_one_line_and_keeps_its_rows(
    preset, base, ray_session, tmp_path, capsys
):
    out = tmp_path / "diverged"
    sets = [arg for item in [*base, "aggregation.lr=1.0e+38"] for arg in ("--set", item)]
    code = main(["run", preset, "--output", str(out), *sets])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0
    # the server's check of w_{t+1}, or (K-async) the clients' NaN updates on a huge model
    assert any("diverged" in line and "aggregation.lr" in line for line in err), err
    assert not any("Traceback" in line for line in err)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed"
    if preset == "fedavgm":  # rounds are logged one by one: the rounds before it stay
        rows = pq.read_table(out / "metrics.parquet").to_pandas()
        assert len(rows) >= 1


def test_a_k_async_run_that_diverges_mid_chunk_keeps_the_chunks_earlier_rows(
    ray_session, tmp_path, capsys, monkeypatch
):
    """The server runs 10 iterations per call: a NaN model at iteration 13 ends the run there,
    with iterations 0-12 in metrics.parquet and updates.parquet (10-12 are of the failing call)."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "fixtures"))  # user_rules
    out = tmp_path / "diverged"
    sets = [*ASYNC, "aggregation.optimizer=user_rules:nan_at", "checkpoint_every=0"]
    code = main(["run", "kasync", "--output", str(out), *(a for s in sets for a in ("--set", s))])
    err = capsys.readouterr().err
    assert code != 0 and "iteration 13: the model diverged" in err, err
    assert json.loads((out / "summary.json").read_text())["status"] == "failed"
    metrics = pq.read_table(out / "metrics.parquet").to_pandas()
    assert metrics["iteration"].tolist() == list(range(13))
    updates = pq.read_table(out / "updates.parquet").to_pandas()
    assert sorted(updates["iteration"].unique()) == list(range(13))


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["fedadam", "--set", "aggregation.lr=0"], "aggregation.lr=0"),
        (["fedadam", "--set", "aggregation.lr=-0.1"], "aggregation.lr=-0.1"),
        (["fedadam", "--set", "aggregation.optimizer={fedadam: {beta1: 1.0}}"], "beta1"),
        (["fedyogi", "--set", "aggregation.optimizer={fedyogi: {beta2: -0.1}}"], "beta2"),
        (["fedadam", "--set", "aggregation.optimizer={fedadam: {tau: 0}}"], "tau"),
        (["fedavgm", "--set", "aggregation.optimizer={fedavgm: {momentum: 1.5}}"], "momentum"),
        (["fedprox", "--set", "client.task_params={mu: -0.1}"], "client.task_params.mu"),
        (
            ["fedasync", "--set", "aggregation.optimizer={fedasync: {staleness: linear}}"],
            "staleness",
        ),
        (["dp-fedavg", "--set", "aggregation.rules.dp_noise.noise_multiplier=-1"], "noise_mult"),
        (["dp-fedavg", "--set", "aggregation.rules.dp_clip.clip_norm=0"], "clip_norm"),
        (["dp-fedavg", "--set", "selection.kind=pow-d", "--set", "selection.d=700"], "pow-d"),
        (
            ["kasync", "--set", "aggregation.rules=[dp_clip, weighted_sum, dp_noise, constant_lr]"],
            "mode: async",
        ),
        (["fedavg", "--set", "client.task=scaffold"], "client.task=scaffold needs the scaffold"),
        (["fedbuff", "--set", "clock.concurrency=5"], "clock.concurrency=5 is below"),
        (["fedbuff", "--set", "clock.concurrency=101"], "exceeds data.num_clients"),
    ],
)
def test_bad_baseline_input_is_one_line(argv, needle, capsys):
    assert main(["run", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err
