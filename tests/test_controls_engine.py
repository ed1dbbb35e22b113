"""The AKAFL-RJ control rules inside the engine, on a real Ray (the rules alone: test_control)."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

import rayfl

BASE = ["client.num_workers=2", "iterations=60", "eval.every=10"]


def _run(tmp_path, name, overrides, preset="tiny"):
    return rayfl.run(preset, overrides=[*BASE, *overrides], output=tmp_path / name, progress=False)


def _tables(result):
    m = pq.read_table(result.run_dir / "metrics.parquet").to_pandas()
    u = pq.read_table(result.run_dir / "updates.parquet").to_pandas()
    return m, u


def test_remodel_bounds_staleness_and_counts_the_dropped_jobs(ray_session, tmp_path):
    plain = _run(tmp_path, "plain", ["aggregation.k=2"])
    eps_r = 4
    bounded = _run(
        tmp_path,
        "remodel",
        ["aggregation.k=2", f"aggregation.control={{remodel: {{eps_r: {eps_r}}}}}"],
    )
    _, u_plain = _tables(plain)
    m, u = _tables(bounded)
    assert u_plain["staleness"].max() > eps_r  # without remodel staleness goes past the bound
    assert u["staleness"].max() <= eps_r  # with it, never
    assert bounded.summary["remodels"] == m["agg/remodels"].sum() > 0
    assert 0 < bounded.summary["wasted_jobs"] <= bounded.summary["remodels"]
    assert bounded.summary["jobs_lost"] == 0


def test_adaptive_k_decays_towards_k_min_once_the_loss_is_low(ray_session, tmp_path):
    # eps_k above any loss: K decays from the first iteration, by exp(-0.05) per iteration.
    result = _run(
        tmp_path, "ak", ["aggregation.control={adaptive_k: {eps_k: 100.0, rho: 0.05, k_min: 2}}"]
    )
    m, _ = _tables(result)
    k = m["agg/k"].to_numpy()
    assert k[0] == 4 and k[-1] == 2 and (np.diff(k) <= 0).all()
    expected = np.maximum(2, np.round(4 * np.exp(-0.05 * np.arange(1, 60))))
    assert (k[1:] == expected).all()
    # eps_k below any loss: K holds.
    held = _run(tmp_path, "hold", ["aggregation.control={adaptive_k: {eps_k: 0.0, rho: 0.05}}"])
    assert (_tables(held)[0]["agg/k"] == 4).all()


def test_judgement_keeps_the_previous_model_and_reports_its_state(ray_session, tmp_path):
    # Zero tolerance and no smoothing (delta1 = 0): from activation on, a candidate less
    # accurate than the model it would replace is rejected and w_{t+1} = w_t.
    judge = (
        "aggregation.control={judgement: {eps_m: 1.0, t_min_fraction: 0.5, theta_0: 0.0, "
        "kappa: 0.0, delta1: 0.0, eval_every: 5}}"
    )
    result = _run(tmp_path, "judge", [judge])
    m, _ = _tables(result)
    active = m["judge/active"].fillna(0).to_numpy()
    first = int(np.argmax(active > 0))
    assert first >= 30 and active[first:].all()
    assert (m["agg/kept_previous"].iloc[:first] == 0).all()
    assert result.summary["maintained"] == int(m["agg/kept_previous"].sum()) > 0
    assert m["judge/maintained"].iloc[-1] == result.summary["maintained"]
    assert m["judge/tolerance"].iloc[first + 1 :].notna().all()


def test_nominal_staleness_computes_on_the_newest_model(ray_session, tmp_path):
    true = _run(tmp_path, "true", [])
    nominal = _run(tmp_path, "nominal", ["aggregation.staleness=nominal"])
    again = _run(tmp_path, "nominal2", ["aggregation.staleness=nominal", "client.num_workers=1"])
    assert nominal.weights.tobytes() == again.weights.tobytes()  # still deterministic
    assert nominal.weights.tobytes() != true.weights.tobytes()
    # Staleness is still counted (it weights the updates and the lr), the arrival order is equal.
    _, u_true = _tables(true)
    _, u_nom = _tables(nominal)
    assert u_true["staleness"].tolist() == u_nom["staleness"].tolist()


def test_remodel_on_the_real_clock_cancels_stale_jobs(ray_session, tmp_path):
    result = _run(
        tmp_path,
        "real",
        [
            "clock.kind=real",
            "clock.time_scale=0.002",
            "clock.straggler_fraction=0.2",
            "clock.straggler_slowdown=20",
            "iterations=40",
            "aggregation.control={remodel: {eps_r: 3}}",
        ],
    )
    m, u = _tables(result)
    assert result.summary["remodels"] > 0 and result.summary["wasted_jobs"] > 0
    assert u["staleness"].max() <= 3
    assert result.summary["jobs_lost"] == 0
