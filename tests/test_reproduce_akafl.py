"""``rayfl reproduce akafl``: the plan covers issue 3's ablations, the table's numbers against hand
computations, and the quick reproduction end to end through the CLI."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rayfl.aggregation import rule_names
from rayfl.config import dump_config, load_config
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


def test_paper_scale_plan_is_the_arms_with_paper_numbers_at_t5000():
    specs = akafl.plan(quick=False, paper_scale=True)
    arms = {s.arm for s in specs}
    assert arms == {
        "paper-akafl",
        "paper-akafl-r",
        "paper-akafl-rj",
        "stale-akafl",
        "stale-akafl-r",
        "stale-nominal-akafl",
        "stale-nominal-akafl-r",
        "stale-akafl-k5",
        "stale-akafl-r-k5",
        "stragglers-fixed-k10",
        "stragglers-adaptive-k",
    }
    assert len(specs) == 3 * 11  # every arm, the straggler pair included, at seeds 0, 1, 2
    for spec in specs:
        c = load_config(spec.preset, list(spec.overrides))
        assert c.iterations == akafl.PAPER_T and c.model.name != "mlp"
        assert [akafl.window(c.iterations, w) for w in akafl.PAPER_WINDOWS] == [1000, 500]
    assert {s.seed for s in specs if s.group == "stragglers"} == {0, 1, 2}
    # the same runs as the full plan's, so results made by either count for both
    full = {(s.folder, s.overrides) for s in akafl.plan(quick=False)}
    assert {(s.folder, s.overrides) for s in specs} <= full
    assert {s.group for s in akafl.plan(quick=False, paper_scale=True, groups=["k"])} == {"k"}
    for wrong in ({"quick": True}, {"quick": False, "iterations": 1000}):
        with pytest.raises(RayflError, match="--paper-scale runs the paper's T = 5000"):
            akafl.plan(paper_scale=True, **wrong)


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
    text = akafl.format_table(rows, command="c", quick=True)
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


# --- the results store ------------------------------------------------------------------------


def _stragglers(t=20, **kw):
    """The tiny straggler pair of the store tests: quick sizes, T = ``t``, one seed."""
    return akafl.plan(quick=True, seeds=1, iterations=t, groups=["stragglers"], **kw)


def _fake_run(root: Path, spec, acc=0.9, wall_s=12.5) -> Path:
    """A finished run folder of ``spec`` as the engine writes it (config, summary, metrics with a
    column the store does not keep)."""
    import json

    from rayfl.config import dump_config

    cfg = load_config(spec.preset, list(spec.overrides))
    run = root / spec.folder
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(dump_config(cfg))
    cols = _columns(t=cfg.iterations, acc=acc, kept=np.arange(cfg.iterations) % 3 == 0)
    cols["train/loss"] = np.linspace(2.0, 0.5, cfg.iterations)
    pq.write_table(pa.table(cols), run / "metrics.parquet")
    env = {"machine": "x86_64", "cpu_count": 2, "cpu_model": "Xeon", "cuda": None}
    summary = {"name": spec.arm, "status": "finished", "driver_wall_s": wall_s, "environment": env}
    summary["final_eval_loss"] = float("nan")  # a diverged run's summary has NaN
    (run / "summary.json").write_text(json.dumps(summary))
    return run


def _stored(tmp_path: Path, specs):
    """A store holding a result of each spec, from fake run folders."""
    store = akafl.ResultStore(tmp_path / "results")
    for spec in specs:
        store.write(spec, _fake_run(tmp_path / "runs", spec))
    return store


def test_a_result_keeps_the_tables_numbers_and_only_the_needed_columns(tmp_path: Path):
    import json

    from rayfl.plots import _read_columns

    spec = _stragglers()[0]
    run = _fake_run(tmp_path / "runs", spec)
    store = akafl.ResultStore(tmp_path / "results")
    path = store.write(spec, run)
    assert path == tmp_path / "results" / spec.arm / "seed0-T20.json"
    record = json.loads(path.read_text())
    assert (record["arm"], record["seed"], record["iterations"]) == (spec.arm, 0, 20)
    assert record["config_sha256"] == akafl.config_sha256(akafl.comparable_config(spec))
    assert record["summary"]["driver_wall_s"] == 12.5 and "Xeon" in record["machine"]
    # the columns kept are the tables' and figures', every iteration, losslessly
    full = _read_columns(run / "metrics.parquet")
    stored = _read_columns(path.with_suffix(".parquet"))
    assert set(stored) == set(akafl.RESULT_COLUMNS)
    for name, values in stored.items():
        np.testing.assert_array_equal(values, full[name])
    numbers = akafl.run_numbers(full, 20)
    loaded = store.load(spec)
    assert loaded is not None
    for key, value in numbers.items():
        assert loaded["numbers"][key] == pytest.approx(value, nan_ok=True), key
    # nothing of the run's size: no checkpoint, no updates, a few kB
    assert path.stat().st_size < 8000 and path.with_suffix(".parquet").stat().st_size < 8000
    assert sorted(p.name for p in path.parent.iterdir()) == ["seed0-T20.json", "seed0-T20.parquet"]


def test_a_result_stands_for_its_config_only(tmp_path: Path, monkeypatch, capsys):
    import json

    spec = _stragglers()[0]
    store = _stored(tmp_path, [spec])
    assert store.load(spec) is not None
    # another T is another file; another override of the same T is another experiment
    assert store.load(_stragglers(t=21)[0]) is None
    other = dataclasses.replace(spec, overrides=(*spec.overrides, "eval.every=4"))
    assert store.load(other) is None
    assert "made with another config (eval.every: 5 -> 4); running it again" in (
        capsys.readouterr().out
    )
    # where the run executes is not part of its identity (a GPU box may take a batch)
    placed = dataclasses.replace(spec, overrides=(*spec.overrides, "client.num_cpus=4"))
    assert store.load(placed) is not None
    # a config field added since, at its default, keeps the result; a changed default does not
    path = store.paths(spec, akafl.comparable_config(spec))[0]
    record = json.loads(path.read_text())
    assert record["config"]["clock.concurrency"] is None  # at its default in this arm
    del record["config"]["clock.concurrency"]
    path.write_text(json.dumps(record))
    assert store.load(spec) is not None
    # a field the arm sets away from its default (the paper profile's x / 255 inputs) is kept
    assert record["config"]["data.normalize"] == "unit"
    del record["config"]["data.normalize"]
    path.write_text(json.dumps(record))
    assert store.load(spec) is None


def test_changing_an_arm_plans_that_arm_again_and_nothing_else(tmp_path: Path, monkeypatch):
    specs = _stragglers()
    store = _stored(tmp_path, specs)
    assert akafl.runs_to_do(specs, store, tmp_path / "none") == []
    arms = tuple(
        dataclasses.replace(a, overrides=(*a.overrides, "aggregation.lr=0.04"))
        if a.name == "stragglers-adaptive-k"
        else a
        for a in akafl.ARMS
    )
    monkeypatch.setattr(akafl, "ARMS", arms)
    todo = akafl.runs_to_do(_stragglers(), store, tmp_path / "none")
    assert [s.arm for s in todo] == ["stragglers-adaptive-k"]


def test_a_finished_run_folder_is_stored_instead_of_run_again(tmp_path: Path, capsys):
    spec = _stragglers()[0]
    _fake_run(tmp_path / "runs", spec)
    store = akafl.ResultStore(tmp_path / "results")
    assert akafl.runs_to_do([spec], store, tmp_path / "runs") == []
    out = capsys.readouterr().out
    assert f"{spec.folder} finished: {tmp_path / 'results' / spec.arm / 'seed0-T20.json'}" in out
    assert store.load(spec) is not None


@pytest.mark.parametrize(
    "damage",
    ["truncated json", "not an object", "no numbers", "metrics missing", "metrics replaced"],
)
def test_an_unusable_result_is_reported_once_and_run_again(tmp_path: Path, capsys, damage):
    spec = _stragglers()[0]
    store = _stored(tmp_path, [spec])
    capsys.readouterr()
    path = store.paths(spec, akafl.comparable_config(spec))[0]
    text = path.read_text()
    if damage == "truncated json":
        path.write_text(text[: len(text) // 2])
    elif damage == "not an object":
        path.write_text("[1, 2]")
    elif damage == "no numbers":
        path.write_text(text.replace('"numbers"', '"numberz"'))
    elif damage == "metrics missing":
        path.with_suffix(".parquet").unlink()
    else:  # a parquet of another write, e.g. a run killed between the two files
        path.with_suffix(".parquet").write_bytes(b"PAR1")
    assert akafl.runs_to_do([spec], store, tmp_path / "none") == [spec]
    assert store.load(spec) is None
    lines = [line for line in capsys.readouterr().out.splitlines() if str(path) in line]
    assert len(lines) == 1 and lines[0].endswith("; running it again"), lines
    # the re-run replaces it
    store.write(spec, tmp_path / "runs" / spec.folder)
    assert store.load(spec) is not None


def test_an_interrupted_write_leaves_no_part_of_a_file(tmp_path: Path, monkeypatch):
    target = tmp_path / "a" / "seed0-T20.json"
    akafl.write_atomically(target, b"old")

    def killed(*_):
        raise KeyboardInterrupt

    monkeypatch.setattr(akafl.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        akafl.write_atomically(target, b"new, cut short")
    assert target.read_bytes() == b"old"
    monkeypatch.undo()
    akafl.write_atomically(target, b"new")  # and the next write clears the leftover
    assert [p.name for p in target.parent.iterdir()] == [target.name]
    assert target.read_bytes() == b"new"


def test_report_only_needs_the_store_alone(tmp_path: Path, capsys):
    specs = _stragglers()
    store = _stored(tmp_path, specs[:1])  # one of the two runs stored

    def report(out: str) -> str:
        table = akafl.reproduce(
            tmp_path / out,
            quick=True,
            seeds=1,
            address=None,
            progress=False,
            iterations=20,
            only=["stragglers"],
            results=store.root,
            report_only=True,
        )
        return table.read_bytes()

    first = report("a")
    assert "akafl: report from the 1 of 2 runs stored in" in capsys.readouterr().out
    text = first.decode()
    assert "| stragglers-fixed-k10-seed0 | finished | 20 | 12 |" in text
    assert "| stragglers-adaptive-k-seed0 | missing | - | - |" in text
    assert "(1 runs). Wall time of the 1 finished runs, summed: 0.2 min." in text
    assert not (tmp_path / "a" / "runs").exists()
    store.write(specs[1], _fake_run(tmp_path / "runs", specs[1]))
    second = report("b")
    assert second != first and second == report("c")  # a pure function of the store
    for name in ("fig6_time_per_iteration.png", "fig7_k.png"):
        assert (tmp_path / "b" / name).stat().st_size > 1000


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
    # --quick keeps its results in the output folder, out of the committed ones
    assert len(list((out / "results").glob("*/seed0-T100.json"))) == len(akafl.ARMS)
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


def test_results_store_end_to_end(ray_address, tmp_path: Path, cli, monkeypatch, capsys):
    """A tiny plan (the straggler pair, T = 20) through the CLI: each finished run is stored; the
    same command again runs nothing and writes the same table; --report-only rebuilds it from the
    store; a damaged result is reported and run again; a changed arm alone runs again."""
    results = tmp_path / "results"
    plan_args = ("--quick", "--only", "stragglers", "--seeds", "1", "--iterations", "20")

    def call(out: str, *extra: str) -> tuple[str, bytes]:
        proc = cli(
            "reproduce", "akafl", *plan_args, "--results", str(results), "--output",
            str(tmp_path / out), "--address", ray_address, "--no-progress", *extra, timeout=600,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout, (tmp_path / out / "table.md").read_bytes()

    def finished(stdout: str) -> list[str]:
        return [line for line in stdout.splitlines() if " finished: " in line]

    out, first = call("first")
    stored = sorted(results.rglob("*.json"))
    assert [p.relative_to(results).as_posix() for p in stored] == [
        "stragglers-adaptive-k/seed0-T20.json",
        "stragglers-fixed-k10/seed0-T20.json",
    ]
    assert sorted(line.split(": ")[-1] for line in finished(out)) == [str(p) for p in stored]
    # the same config again: nothing runs, the same table
    out, again = call("again")
    assert "akafl: 2 of 2 runs in" in out and finished(out) == []
    assert not (tmp_path / "again" / "runs").exists()
    assert again == first
    # the store alone
    out, report = call("report", "--report-only")
    assert report == first
    assert {p.name for p in (tmp_path / "report").glob("*.png")} == {
        "fig6_time_per_iteration.png",
        "fig7_k.png",
    }
    # a damaged result: one line, and that run again
    stored[0].write_text("{")
    out, _ = call("damaged")
    (damaged,) = [line for line in out.splitlines() if str(stored[0]) in line and "unread" in line]
    assert damaged.startswith(f"akafl: {stored[0]}: unreadable (JSONDecodeError: ")
    assert damaged.endswith("; running it again")
    assert [line.split(": ")[-1] for line in finished(out)] == [str(stored[0])]
    # a changed arm (in-process, the plan patched): that arm alone runs again
    arms = tuple(
        dataclasses.replace(a, overrides=(*a.overrides, "aggregation.lr=0.04"))
        if a.name == "stragglers-fixed-k10"
        else a
        for a in akafl.ARMS
    )
    monkeypatch.setattr(akafl, "ARMS", arms)
    capsys.readouterr()
    akafl.reproduce(
        tmp_path / "changed",
        quick=True,
        seeds=1,
        address=ray_address,
        progress=False,
        iterations=20,
        only=["stragglers"],
        results=results,
    )
    assert [line.split(": ")[-1] for line in finished(capsys.readouterr().out)] == [str(stored[1])]
    assert [p.name for p in (tmp_path / "changed" / "runs").iterdir()] == [
        "stragglers-fixed-k10-seed0"
    ]


def test_an_interrupted_run_goes_on_from_its_checkpoint(ray_session, tmp_path: Path):
    """A run stopped part-way (a killed session leaves its folder and its last checkpoint) is
    continued by the next call, not started again, and ends on an unbroken run's bytes."""
    import torch

    import rayfl

    (spec,) = akafl.plan(quick=True, seeds=1, groups=["stragglers"], iterations=40)[:1]
    root = tmp_path / "runs"
    run_dir = root / spec.folder
    stopped = rayfl.run(
        spec.preset, overrides=list(spec.overrides), output=run_dir, progress=False,
        callback=lambda rows: True,  # stop cleanly after the first chunk of iterations
    )  # fmt: skip
    assert stopped.summary["status"] == "stopped"
    before = pq.read_table(run_dir / "metrics.parquet").to_pandas()
    assert 0 < len(before) < 40 and akafl.resumable(run_dir, spec)

    outcomes = akafl.run_plan([spec], root)
    assert outcomes[spec.folder]["status"] == "finished"
    after = pq.read_table(run_dir / "metrics.parquet").to_pandas()
    assert len(after) == 40
    # continued, not restarted: the first rows are the stopped run's, wall-clock columns included
    assert after.iloc[: len(before)].equals(before)
    rayfl.run(
        spec.preset, overrides=list(spec.overrides), output=tmp_path / "unbroken", progress=False
    )
    resumed = torch.load(run_dir / "model.pt")
    expected = torch.load(tmp_path / "unbroken" / "model.pt")
    assert all(torch.equal(resumed[k], expected[k]) for k in expected)
    assert not akafl.resumable(run_dir, spec)  # finished: nothing to go on from


def test_a_run_folder_of_another_config_or_a_broken_checkpoint_starts_again(tmp_path: Path):
    (spec,) = akafl.plan(quick=True, seeds=1, groups=["stragglers"], iterations=20)[:1]
    run_dir = tmp_path / spec.folder
    run_dir.mkdir()
    assert not akafl.resumable(run_dir, spec)  # no checkpoint
    (run_dir / "checkpoint.npz").write_bytes(b"not a checkpoint")
    cfg = load_config(spec.preset, list(spec.overrides))
    (run_dir / "config.yaml").write_text(dump_config(cfg))
    assert not akafl.resumable(run_dir, spec)  # unreadable checkpoint


def test_a_resumed_runs_wall_time_counts_all_its_sessions():
    """The runs table's wall time: the server's, carried across a resume (the driver's counts
    the last session only; older summaries have only that)."""
    from rayfl.reproduce.akafl import run_wall_s

    assert run_wall_s({"wall_s": 1770.5, "driver_wall_s": 229.5}) == 1770.5
    assert run_wall_s({"driver_wall_s": 229.5}) == 229.5
