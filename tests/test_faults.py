"""Fault tolerance on a real Ray: broken updates are rejected, a killed worker loses nothing."""

from __future__ import annotations

import os
import signal

import numpy as np
import psutil
import pyarrow.parquet as pq
import pytest

import rayfl
from rayfl.clients.worker import corrupt
from rayfl.config import FAULT_KINDS, load_config
from rayfl.errors import ConfigError
from rayfl.server.aggregate import check_update
from rayfl.types import Update


def _update(vector: np.ndarray, loss: float = 0.5) -> Update:
    return Update(client_id=3, version=0, vector=vector, loss=loss)


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("nan", "nonfinite"),
        ("inf", "nonfinite"),
        ("huge", "norm"),
        ("shape", "shape"),
        ("dtype", "dtype"),
    ],
)
def test_every_fault_kind_is_rejected_with_its_reason(kind, reason):
    good = np.linspace(-1, 1, 50, dtype=np.float32)
    assert check_update(_update(good), good.shape, 1e6) is None
    assert check_update(_update(corrupt(good, kind)), good.shape, 1e6) == reason
    assert set(FAULT_KINDS) == {"nan", "inf", "huge", "shape", "dtype"}


def test_nonfinite_loss_and_norm_limit():
    v = np.ones(4, dtype=np.float32)  # norm 2
    assert check_update(_update(v, loss=float("nan")), v.shape, None) == "nonfinite"
    assert check_update(_update(v), v.shape, 1.9) == "norm"
    assert check_update(_update(v), v.shape, 2.1) is None
    assert check_update(_update(v * 1e30), v.shape, None) is None  # no norm check


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("client.faults={kind: nan}", "client.faults.client_ids"),
        ("client.faults={client_ids: [1], kind: evil}", "client.faults.kind"),
        ("client.faults={client_ids: [1], kind: nan, when: 3}", "client.faults.when"),
        ("client.max_restarts=-2", "client.max_restarts"),
        ("aggregation.max_update_norm=0", "aggregation.max_update_norm"),
    ],
)
def test_bad_fault_config_names_the_field(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config("tiny", [override])


def test_planted_faulty_clients_never_reach_the_model(ray_session, tmp_path):
    faulty = [0, 5, 11]
    result = rayfl.run(
        "tiny",
        overrides=[
            "client.num_workers=2",
            "iterations=30",
            f"client.faults={{client_ids: {faulty}, kind: nan}}",
        ],
        output=tmp_path / "faulty",
        progress=False,
    )
    assert np.isfinite(result.weights).all()
    metrics = pq.read_table(result.run_dir / "metrics.parquet").to_pandas()
    updates = pq.read_table(result.run_dir / "updates.parquet").to_pandas()
    assert metrics["agg/rejected"].sum() == result.summary["rejected_updates"]["nonfinite"] > 0
    assert not set(updates["client_id"]) & set(faulty)  # none of theirs was aggregated
    assert (metrics["agg/k"] == 4).all()  # K is still met from the healthy clients
    assert np.isfinite(metrics["train/loss"]).all()
    assert result.summary["jobs_lost"] == 0
    assert result.final_accuracy > 0.2  # it learns (chance is 0.1)


def _worker_pids() -> set[int]:
    """Client worker processes of the session's Ray (a child of this process), no other Ray's."""
    pids = set()
    for p in psutil.Process().children(recursive=True):
        try:
            if " ".join(p.cmdline()).startswith("ray::ClientWorker"):
                pids.add(p.pid)
        except psutil.Error:
            continue
    return pids


@pytest.mark.parametrize(
    "extra",
    [
        [],
        # Remodel drops jobs of batches already sent and frees their versions: a batch re-run
        # after the kill must still find them (the soak found this), with either staleness.
        ["aggregation.control={remodel: {eps_r: 2}}", "aggregation.staleness=true"],
        ["aggregation.control={remodel: {eps_r: 2}}", "aggregation.staleness=nominal"],
    ],
    ids=["plain", "remodel", "remodel-nominal"],
)
def test_killed_worker_loses_no_update_and_changes_nothing(ray_session, tmp_path, extra):
    overrides = ["client.num_workers=2", "iterations=60", "eval.every=20", *extra]
    clean = rayfl.run("tiny", overrides=overrides, output=tmp_path / "clean", progress=False)
    before = _worker_pids()
    killed: list[int] = []

    def kill_one(rows):
        # At iteration 15 every worker of the run dies at once; at 40 one of them dies again.
        it = rows[-1]["iteration"]
        if (not killed and it >= 15) or (len(killed) == 2 and it >= 40):
            mine = sorted(_worker_pids() - before)
            assert mine, "no worker process of this run found"
            for pid in mine if not killed else mine[:1]:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

    hit = rayfl.run(
        "tiny", overrides=overrides, output=tmp_path / "hit", progress=False, callback=kill_one
    )
    assert hit.summary["num_workers"] == 2 and len(hit.summary["worker_nodes"]) == 1
    assert len(killed) == 3
    assert hit.summary["worker_failures"] >= 2
    # The virtual clock makes an update a function of (client, version, seed): a re-run job
    # gives the same update, so the run ends exactly where the undisturbed one does.
    assert hit.weights.tobytes() == clean.weights.tobytes()
    metrics = pq.read_table(hit.run_dir / "metrics.parquet").to_pandas()
    updates = pq.read_table(hit.run_dir / "updates.parquet").to_pandas()
    assert len(metrics) == 60
    assert int(metrics["agg/k"].sum()) == len(updates) == hit.summary["updates_aggregated"]
    assert not updates.duplicated(["iteration", "client_id"]).any()
    assert hit.summary["jobs_lost"] == 0
