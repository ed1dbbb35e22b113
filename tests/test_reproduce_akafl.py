"""``rayfl reproduce akafl``: the plan covers issue 3's ablations, the table's numbers against hand
computations, and the quick reproduction end to end through the CLI."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rayfl.aggregation import rule_names
from rayfl.config import load_config
from rayfl.errors import RayflError
from rayfl.reproduce import akafl


def _configs(specs):
    return {s.folder: (s, load_config(s.preset, list(s.overrides))) for s in specs}


# --- the plan ---------------------------------------------------------------------------------


def test_full_plan_has_every_ablation_of_issue_3():
    specs = akafl.plan(quick=False)
    cfgs = _configs(specs)
    assert len(specs) == 3 * len(akafl.ARMS)  # 3 seeds by default
    assert {s.seed for s in specs} == {0, 1, 2}

    def arm(name, seed=0):
        return cfgs[f"{name}-seed{seed}"][1]

    # the five algorithms on the paper profile: N = 100, K_0 = 10, T = 5000, their controls
    controls = {
        "paper-kasync": set(),
        "paper-wkafl": set(),
        "paper-akafl": {"adaptive_k"},
        "paper-akafl-r": {"adaptive_k", "remodel"},
        "paper-akafl-rj": {"adaptive_k", "remodel", "judgement"},
    }
    for name, expected in controls.items():
        c = arm(name)
        assert (c.data.num_clients, c.aggregation.k, c.iterations) == (100, 10, 5000)
        assert set(c.aggregation.control) == expected
        assert c.clock.straggler_fraction == 0
    assert "mean" in rule_names(arm("paper-kasync").aggregation.rules)
    assert "similarity_select" in rule_names(arm("paper-wkafl").aggregation.rules)
    # AKAFL vs AKAFL-R on the stale profile, both staleness modes
    for mode, prefix in (("true", "stale-"), ("nominal", "stale-nominal-")):
        for name, remodel in ((f"{prefix}akafl", False), (f"{prefix}akafl-r", True)):
            c = arm(name)
            assert c.data.num_clients == 1000 and c.aggregation.k == 10
            assert str(c.aggregation.staleness).lower() == mode
            assert ("remodel" in c.aggregation.control) is remodel
            if remodel:
                assert c.aggregation.control["remodel"]["eps_r"] == 50
    # K = 5 and 10 with and without remodel, stale profile
    k_arms = akafl.ABLATIONS["K = 5 and 10 with and without remodel (stale profile, Fig. 8-10)"]
    seen = {
        (arm(a).aggregation.k, "remodel" in arm(a).aggregation.control, arm(a).data.num_clients)
        for a in k_arms
    }
    assert seen == {(5, False, 1000), (5, True, 1000), (10, False, 1000), (10, True, 1000)}
    # fixed K = 10 vs adaptive K with stragglers 0.1 x 10
    fixed, adaptive = arm("stragglers-fixed-k10"), arm("stragglers-adaptive-k")
    for c in (fixed, adaptive):
        assert (c.clock.straggler_fraction, c.clock.straggler_slowdown) == (0.1, 10)
        assert c.aggregation.k == 10 and c.data.num_clients == 100
    assert "adaptive_k" not in fixed.aggregation.control
    assert "adaptive_k" in adaptive.aggregation.control
    # every run: one worker of its own, its own seed and name
    for spec, c in cfgs.values():
        assert c.client.num_workers == 1 and c.seed == spec.seed and c.name == spec.arm
    # every arm named by an ablation is in the plan
    assert {a for arms in akafl.ABLATIONS.values() for a in arms} == {a.name for a in akafl.ARMS}


def test_quick_plan_is_small_and_keeps_the_ablations():
    quick = _configs(akafl.plan(quick=True))
    full = _configs(akafl.plan(quick=False, seeds=1))
    assert quick.keys() == full.keys()  # the same arms, one seed
    for folder, (_, c) in quick.items():
        f = full[folder][1]
        assert c.iterations == akafl.QUICK_T and c.model.name == "mlp"
        assert c.data.num_clients < f.data.num_clients
        # the ablated switches are the full plan's
        assert set(c.aggregation.control) == set(f.aggregation.control)
        assert c.aggregation.k == f.aggregation.k
        assert c.aggregation.staleness == f.aggregation.staleness
        assert c.clock.straggler_fraction == f.clock.straggler_fraction


def test_iterations_per_group():
    specs = akafl.plan(quick=False, seeds=2, iterations={"paper": 1500, "stale": 300})
    ts = {(s.group, load_config(s.preset, list(s.overrides)).iterations) for s in specs}
    assert ts == {("paper", 1500), ("stale", 300), ("k", 5000), ("stragglers", 5000)}
    assert {
        load_config(s.preset, list(s.overrides)).iterations
        for s in akafl.plan(quick=True, iterations=40)
    } == {40}


# --- the numbers, by hand ---------------------------------------------------------------------


def test_only_some_groups():
    specs = akafl.plan(quick=False, seeds=2, groups=["stragglers", "k"])
    assert {s.group for s in specs} == {"stragglers", "k"}
    assert len(specs) == 2 * 4  # 2 straggler arms + 2 K = 5 arms, per seed
    with pytest.raises(RayflError, match="no such group; choose from paper"):
        akafl.plan(quick=True, groups=["papers"])


def test_window_scales_with_t():
    assert akafl.window(5000, 1000) == 1000
    assert akafl.window(8000, 500) == 500
    assert akafl.window(1500, 1000) == 300
    assert akafl.window(1500, 500) == 150


def test_mean_last_by_hand():
    it = np.arange(10)
    acc = np.full(10, np.nan)
    acc[[1, 3, 5, 7, 9]] = [0.1, 0.2, 0.3, 0.4, 0.5]
    # T = 10: the last 4 iterations are t = 6..9, evaluated at 7 and 9
    assert akafl.mean_last(it, acc, 4) == pytest.approx(0.45)
    assert akafl.mean_last(it, acc, 10) == pytest.approx(0.3)
    assert akafl.mean_last(it, acc, 1) == pytest.approx(0.5)
    assert math.isnan(akafl.mean_last(it, np.full(10, np.nan), 4))


def test_dev_accuracy_by_hand():
    # A = 0.5, 0.52, 0.538; D = 0, 0.1 * 0.02 = 0.002, 0.9 * 0.002 + 0.1 * 0.018 = 0.0036
    series = akafl.dev_accuracy_series([0.5, 0.7, 0.7])
    np.testing.assert_allclose(series, [0.0, 0.002, 0.0036], atol=1e-12)
    it = np.arange(3)
    acc = np.array([0.5, 0.7, 0.7])
    assert akafl.dev_accuracy_last(it, acc, 2) == pytest.approx((0.002 + 0.0036) / 2)
    # a flat series has no deviation
    assert akafl.dev_accuracy_last(np.arange(5), np.full(5, 0.9), 5) == 0.0


def test_dominance_share_by_hand():
    assert akafl.dominance_share(np.array([0.9, 0.5, 0.81, 0.8])) == pytest.approx(0.5)
    assert akafl.dominance_share(np.array([0.2, np.nan, 0.3])) == 0.0
    assert math.isnan(akafl.dominance_share(np.array([np.nan])))


def _columns(t=10, acc=0.9, max_weight=0.5, kept=None, vt_step=2.0):
    it = np.arange(t, dtype=float)
    accuracy = np.full(t, np.nan)
    accuracy[4::5] = acc
    return {
        "iteration": it,
        "eval/accuracy": accuracy,
        "agg/max_weight": np.full(t, max_weight),
        "agg/kept_previous": np.zeros(t) if kept is None else np.asarray(kept, dtype=float),
        "sys/virtual_time": vt_step * (it + 1),
        "agg/k": np.full(t, 10.0),
        "agg/staleness_mean": np.full(t, 3.0),
        "agg/lr": np.full(t, 0.05),
        "agg/remodels": np.ones(t),
    }


def test_run_numbers_by_hand():
    cols = _columns(kept=[0, 0, 1, 0, 1, 1, 0, 0, 0, 0])
    cols["eval/accuracy"][[4, 9]] = [0.8, 0.9]
    cols["agg/max_weight"][:3] = 0.95
    n = akafl.run_numbers(cols, iterations=10)
    assert n["window_1"] == 2 and n["window_2"] == 1  # 1000 and 500 scaled by 10 / 5000
    assert n["acc_w1"] == pytest.approx(0.9) and n["final_accuracy"] == pytest.approx(0.9)
    assert n["maintained"] == 3
    assert n["virtual_time"] == pytest.approx(20.0)
    assert n["dominance"] == pytest.approx(0.3)
    assert n["remodels"] == 10 and n["iterations_done"] == 10


def _rows(**per_arm):
    """Finished rows, one per (arm, seed): per_arm = {arm: [{key: value}, ...]}."""
    rows = []
    for arm, seeds in per_arm.items():
        for seed, numbers in enumerate(seeds):
            rows.append(
                {
                    "arm": arm,
                    "group": "x",
                    "seed": seed,
                    "status": "finished",
                    "folder": f"/r/{arm}-seed{seed}",
                    **numbers,
                }
            )
    return rows


def _verdicts(rows):
    return [v for _, v, _ in akafl.targets(akafl.arm_means(rows), rows)]


def test_targets_pass_and_miss():
    good = _rows(
        **{
            "paper-akafl-r": [
                {"acc_w1": 0.972, "dev_w1": 0.004},
                {"acc_w1": 0.974, "dev_w1": 0.004},
            ],
            "paper-akafl-rj": [
                {"acc_w1": 0.98, "dev_w1": 0.001},
                {"acc_w1": 0.98, "dev_w1": 0.002},
            ],
            "stale-akafl": [{"acc_w1": 0.40}, {"acc_w1": 0.42}],
            "stale-akafl-r": [{"acc_w1": 0.45}, {"acc_w1": 0.46}],
            "stragglers-fixed-k10": [{"virtual_time": 100.0, "final_accuracy": 0.97}],
            "stragglers-adaptive-k": [{"virtual_time": 65.0, "final_accuracy": 0.966}],
            "stale-akafl-k5": [{"dominance": 0.4}],
            "stale-akafl-r-k5": [{"dominance": 0.2}],
        }
    )
    assert _verdicts(good) == ["PASS"] * 5
    means = akafl.arm_means(good)
    assert means["paper-akafl-r"]["acc_w1"][0] == pytest.approx(0.973)
    assert means["paper-akafl-r"]["acc_w1"][2] == 2

    bad = _rows(
        **{
            "paper-akafl-r": [{"acc_w1": 0.9715, "dev_w1": 0.004}],
            "paper-akafl-rj": [{"acc_w1": 0.98, "dev_w1": 0.0021}],  # dev above half
            "stale-akafl": [{"acc_w1": 0.40}, {"acc_w1": 0.50}],
            "stale-akafl-r": [{"acc_w1": 0.48}, {"acc_w1": 0.49}],  # +3.5 points, not every seed
            "stragglers-fixed-k10": [{"virtual_time": 100.0, "final_accuracy": 0.97}],
            "stragglers-adaptive-k": [{"virtual_time": 71.0, "final_accuracy": 0.97}],
            "stale-akafl-k5": [{"dominance": 0.4}],
            "stale-akafl-r-k5": [{"dominance": 0.21}],
        }
    )
    assert _verdicts(bad) == ["MISS"] * 5
    # an ablation that did not run is n/a, not a PASS
    assert _verdicts(_rows(**{"paper-akafl-r": [{"acc_w1": 0.99}]}))[1:] == ["n/a"] * 4


def test_unfinished_runs_are_left_out_of_the_means_and_listed():
    rows = _rows(**{"paper-akafl-r": [{"acc_w1": 0.97, "iterations": 100}]})
    rows.append(
        {
            "arm": "paper-akafl-r",
            "group": "paper",
            "seed": 1,
            "status": "failed",
            "folder": "/r/paper-akafl-r-seed1",
            "acc_w1": 0.1,
            "error": "RayflError: boom",
        }
    )
    means = akafl.arm_means(rows)
    assert means["paper-akafl-r"]["acc_w1"][0] == pytest.approx(0.97)
    assert (means["paper-akafl-r"]["seeds"], means["paper-akafl-r"]["planned"]) == (1, 2)
    text = akafl.format_table(rows, command="c", machine="m", wall_s=60.0, quick=True)
    assert "1 of 2 runs did not finish" in text
    assert "| paper-akafl-r-seed1 | failed |" in text and "boom" in text
    assert "| paper-akafl-r | 1/2 | 100 | 0.9700 | 0.9716 |" in text
    assert "T = 100: 20 and 10" in text  # the scaled windows are stated


def test_a_finished_run_of_the_same_config_is_not_run_again(tmp_path: Path):
    from rayfl.config import dump_config

    spec = akafl.plan(quick=True)[0]
    run = tmp_path / spec.folder
    run.mkdir()
    (run / "config.yaml").write_text(dump_config(load_config(spec.preset, list(spec.overrides))))
    assert not akafl._finished(run, spec)  # no summary yet: interrupted
    (run / "summary.json").write_text('{"status": "finished"}')
    assert akafl._finished(run, spec)
    longer = akafl.plan(quick=True, iterations=akafl.QUICK_T + 1)[0]
    assert not akafl._finished(run, longer)  # another T: run it again


def test_histogram_and_diff_figures(tmp_path: Path):
    from rayfl.plots import compare_histograms, compare_runs

    for name, w in (("a", 0.9), ("b", 0.3)):
        run = tmp_path / name
        run.mkdir()
        t = np.arange(50)
        pq.write_table(
            pa.table(
                {"iteration": t, "agg/max_weight": np.full(50, w), "sys/virtual_time": t * 2.0}
            ),
            run / "metrics.parquet",
        )
    hist = compare_histograms(
        [tmp_path / "a", tmp_path / "b"], tmp_path / "h.png", "agg/max_weight", threshold=0.8
    )
    diff = compare_runs([tmp_path / "a"], tmp_path / "d.png", "sys/virtual_time", diff=True)
    assert hist.stat().st_size > 1000 and diff.stat().st_size > 1000


# --- end to end -------------------------------------------------------------------------------


def test_quick_reproduction_end_to_end(ray_address, tmp_path: Path, cli):
    out = tmp_path / "akafl"
    proc = cli(
        "reproduce", "akafl", "--quick", "--output", str(out), "--address", ray_address,
        "--no-progress", timeout=400,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = (out / "table.md").read_text()
    assert "# AKAFL-RJ reproduction" in proc.stdout
    for name, _ in akafl.FIGURES:
        assert (out / name).stat().st_size > 1000, name
        assert f"({name})" in table
    rows = akafl.collect(akafl.plan(quick=True), out / "runs")
    assert [r["status"] for r in rows] == ["finished"] * len(akafl.ARMS)
    for r in rows:
        assert r["iterations_done"] == akafl.QUICK_T
        assert 0.0 < r["acc_w1"] <= 1.0 and r["virtual_time"] > 0
    assert table.count("**PASS**") + table.count("**MISS**") == 5
    by_arm = {r["arm"]: r for r in rows}
    # the switches act: remodel bounds staleness, adaptive K lowers K, K = 5 is K = 5
    assert by_arm["stale-akafl-r"]["remodels"] > 0 == by_arm["stale-akafl"]["remodels"]
    assert by_arm["stale-akafl-r"]["mean_staleness"] < by_arm["stale-akafl"]["mean_staleness"]
    assert (
        by_arm["stragglers-adaptive-k"]["final_k"] < 10 == by_arm["stragglers-fixed-k10"]["final_k"]
    )
    assert by_arm["stale-akafl-k5"]["mean_k"] == 5
