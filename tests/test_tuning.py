"""Ray Tune: the search-space YAML, a real search on the test cluster, placement groups."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import yaml

import rayfl
from rayfl.aggregation import rule_entries
from rayfl.config import load_config
from rayfl.errors import ConfigError
from rayfl.tuning import (
    NOT_REACHED,
    ewma_dev_accuracy,
    load_search,
    param_space,
    trial_metrics,
    trial_resources,
    tune,
)

BASE = {"base": "tiny", "set": ["iterations=20"], "metric": "accuracy_last", "mode": "max"}


def spec_with(search, **extra):
    return load_search({**BASE, "search": search, **extra})


def test_every_distribution_parses_into_tune_domains():
    spec = spec_with(
        {
            "aggregation.lr": {"uniform": [0.01, 0.1]},
            "aggregation.rules.similarity_select.beta": {"loguniform": [1, 30]},
            "aggregation.rules.similarity_select.c_min": {"quniform": [0.0, 0.6, 0.1]},
            "aggregation.k": {"randint": [2, 6]},
            "client.batch_size": {"choice": [8, 16]},
            "seed": {"grid": [0, 1, 2]},
        }
    )
    kinds = {p.path: p.kind for p in spec.params}
    assert kinds["aggregation.k"] == "randint" and kinds["seed"] == "grid"
    space = param_space(spec)
    assert space["seed"] == {"grid_search": [0, 1, 2]}
    assert space["aggregation.lr"].lower == 0.01 and space["aggregation.lr"].upper == 0.1
    assert "LogUniform" in type(space["aggregation.rules.similarity_select.beta"].sampler).__name__
    cfg = spec.trial_config(
        {"aggregation.k": 3, "seed": 2, "aggregation.rules.similarity_select.beta": 5.0}
    )
    assert cfg.aggregation.k == 3 and cfg.seed == 2
    assert dict(rule_entries(cfg.aggregation.rules))["similarity_select"]["beta"] == 5.0
    assert cfg.client.num_workers == 1  # workers_per_trial


@pytest.mark.parametrize(
    ("search", "extra", "needle"),
    [
        ({"aggregation.lr": {"normal": [0, 1]}}, {}, "unknown distribution 'normal'"),
        ({"aggregation.lr": {"uniform": [0.5, 0.1]}}, {}, "low=0.5 is above high=0.1"),
        ({"aggregation.lr": {"loguniform": [0, 1]}}, {}, "low > 0"),
        ({"aggregation.lr": {"uniform": [0.1]}}, {}, "[low, high]"),
        ({"aggregation.nonexistent": {"choice": [1, 2]}}, {}, "aggregation.nonexistent"),
        ({"aggregation.rules.median.x": {"choice": [1]}}, {}, "median"),
        ({"aggregation.k": {"choice": [5, "x"]}}, {}, "aggregation.k"),
        ({"aggregation.lr": {"choice": [0.0, 0.1]}}, {}, "aggregation.lr"),
        ({"aggregation.lr": {"uniform": [0.01, 0.1]}}, {"search_alg": "grid"}, "grid"),
        ({"aggregation.lr": {"choice": [0.1]}}, {"metric": "speed"}, "metric 'speed'"),
        ({"aggregation.lr": {"choice": [0.1]}}, {"scheduler": {"name": "pbt"}}, "scheduler"),
        ({"aggregation.lr": {"choice": [0.1]}}, {"mode": "best"}, "mode"),
        ({"aggregation.lr": {"choice": [0.1]}}, {"bogus": 1}, "bogus"),
        ({}, {}, "search must map"),
    ],
)
def test_bad_search_specs_are_one_line_errors(search, extra, needle):
    with pytest.raises(ConfigError) as info:
        spec_with(search, **extra)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_weighted_metric_and_dev_accuracy_by_hand():
    spec = spec_with(
        {"aggregation.lr": {"choice": [0.05]}},
        metric={"accuracy_last": 1.0, "dev_accuracy": -10.0},
        last_n=2,
        target_accuracy=0.5,
    )
    rows = [
        {"iteration": 9, "eval/accuracy": 0.2, "sys/virtual_time": 10.0, "train/loss": 2.0},
        {"iteration": 19, "eval/accuracy": 0.6, "sys/virtual_time": 20.0, "train/loss": 1.0},
        {"iteration": 29, "eval/accuracy": 0.4, "sys/virtual_time": 30.0, "train/loss": 1.1},
    ]
    m = trial_metrics(rows, spec)
    # A = 0.2, 0.24, 0.256; D = 0, 0.004, 0.0036 + 0.0016 = 0.0052
    assert ewma_dev_accuracy([0.2, 0.6, 0.4]) == pytest.approx(0.0052)
    assert m["accuracy_last"] == pytest.approx(0.5)
    assert m["objective"] == pytest.approx(0.5 - 10 * 0.0052)
    assert m["time_to_target"] == 20.0
    assert trial_metrics(rows[:1], spec)["time_to_target"] == NOT_REACHED
    assert math.isfinite(NOT_REACHED)
    assert m["iterations_to_target"] == 20.0


def test_column_metrics_average_or_take_the_last_value_of_any_column():
    spec = spec_with(
        {"aggregation.lr": {"choice": [0.05]}},
        metric={"mean:incentive/social_welfare": 1.0, "last:incentive/ape": -100.0},
    )
    rows = [
        {"iteration": 0, "incentive/social_welfare": 2.0, "incentive/ape": 0.5},
        {"iteration": 1, "incentive/social_welfare": 4.0},
        {"iteration": 2, "incentive/social_welfare": None, "incentive/ape": 0.25},
    ]
    m = trial_metrics(rows, spec)
    assert m["mean:incentive/social_welfare"] == 3.0
    assert m["last:incentive/ape"] == 0.25
    assert m["objective"] == pytest.approx(3.0 - 25.0)
    with pytest.raises(ConfigError, match="mean:<column>"):
        spec_with({"aggregation.lr": {"choice": [0.05]}}, metric="median:x")


def test_trial_resources_bundle_per_worker():
    cfg = load_config("tiny", ["client.num_gpus=0.25", "client.num_cpus=0.5"])
    pgf = trial_resources(cfg, 3)
    assert pgf.bundles[0] == {"CPU": 0.01}
    assert pgf.bundles[1:] == [{"CPU": 0.5, "GPU": 0.25}] * 3


def test_smoke_search_end_to_end(ray_session, tmp_path):
    outcome = tune("tune_configs/smoke.yaml", storage_path=str(tmp_path), verbose=0)
    trials = pq.read_table(outcome.path / "trials.parquet").to_pandas()
    assert len(trials) == 4
    assert trials["error"].isna().all()
    # ASHA stopped at least one trial before the end (30 iterations = 6 evaluations).
    assert trials["training_iteration"].min() < trials["training_iteration"].max() == 6
    assert (outcome.path / "search.png").stat().st_size > 1000
    # Engine checkpoints (every 10 iterations here) reach Tune as trial checkpoints: a trial
    # that ran all 30 iterations reported the ones at 10 and 20. (How many the others got
    # depends on when ASHA stopped them, which depends on the order the trials report in.)
    ckpts = list(outcome.path.glob("*/checkpoint_*/checkpoint.npz"))
    for trial_id in trials.loc[trials["training_iteration"] == 6, "trial_id"]:
        assert len([p for p in ckpts if trial_id in str(p)]) == 2, (trial_id, ckpts)
    assert {p.name for p in ckpts[0].parent.iterdir()} >= {"checkpoint.npz", "metrics.parquet"}
    best = yaml.safe_load((outcome.path / "best_config.yaml").read_text())
    assert best["aggregation"]["lr"] in (0.02, 0.05)
    # The best config runs unchanged with `rayfl run`.
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "rayfl.cli",
            "run",
            str(outcome.path / "best_config.yaml"),
            "--set",
            "iterations=5",
            "--output",
            str(tmp_path / "best-run"),
            "--no-plot",
            "--address",
            ray_session.get_runtime_context().gcs_address,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    # Resuming a finished search re-reads it and writes the same outputs.
    again = tune("tune_configs/smoke.yaml", storage_path=str(tmp_path), resume=True, verbose=0)
    assert len(again.trials) == 4


def test_four_trials_at_a_quarter_gpu_run_concurrently(ray_session, tmp_path):
    spec = {
        "base": "tiny",
        "name": "gpu-pack",
        "set": [
            "iterations=20",
            "eval.every=5",
            "eval.max_samples=200",
            "client.num_gpus=0.25",
            "client.num_cpus=0.25",
        ],
        "search": {"seed": {"grid": [0, 1, 2, 3]}},
        "metric": "accuracy",
        "num_samples": 1,
    }
    outcome = tune(spec, storage_path=str(tmp_path), verbose=0)
    t = outcome.trials
    assert len(t) == 4 and t["error"].isna().all()
    # All four were running at the same moment: the last start precedes the first finish.
    assert t["trial_started_at"].max() < t["reported_at"].min()


def test_resume_without_a_search_is_a_clear_error(ray_session, tmp_path):
    with pytest.raises(ConfigError, match="no search to resume"):
        tune("tune_configs/smoke.yaml", storage_path=str(tmp_path / "nothing"), resume=True)


def test_failed_trial_resumes_from_its_tune_checkpoint(ray_session, tmp_path):
    """The server dies mid-trial (at its 4th evaluation, t = 20); Tune restarts the trial from
    the engine checkpoint at t = 10 that rode on the t = 15 report, and it ends where an
    undisturbed run ends."""
    marker = tmp_path / "crashed"
    model = f"model={{name: 'crashy:make_net', kwargs: {{marker: '{marker}', crash_at_eval: 4}}}}"
    common = ["iterations=30", "eval.every=5", "eval.max_samples=200", "checkpoint_every=10"]
    spec = {
        "base": "tiny",
        "name": "retry",
        "set": [*common, model, "client.num_workers=1"],
        "search": {"seed": {"grid": [0]}},
        "metric": "accuracy",
        "num_samples": 1,
    }
    outcome = tune(spec, storage_path=str(tmp_path / "tune"), verbose=0)
    assert marker.exists()  # it did crash once
    t = outcome.trials
    assert len(t) == 1 and t["error"].isna().all()
    run_dir = next((tmp_path / "tune" / "retry").glob("*/run"))
    metrics = pq.read_table(run_dir / "metrics.parquet").to_pandas()
    assert list(metrics["iteration"]) == list(range(30))
    clean = rayfl.run(
        "tiny",
        overrides=[*common, model, "client.num_workers=1"],
        output=tmp_path / "clean",
        progress=False,
    )
    resumed = torch.load(run_dir / "model.pt")
    for name, tensor in torch.load(clean.run_dir / "model.pt").items():
        assert torch.equal(tensor, resumed[name]), name


@pytest.mark.parametrize(
    "path", sorted(p.name for p in (Path(__file__).parents[1] / "tune_configs").glob("*.yaml"))
)
def test_every_shipped_search_parses_and_says_what_it_costs(path):
    full = Path(__file__).parents[1] / "tune_configs" / path
    spec = load_search(str(full))
    assert spec.params
    header = [line for line in full.read_text().splitlines() if line.startswith("#")]
    assert any("Cost" in line for line in header), f"{path}: say what it costs in a comment"


def test_a_search_over_the_incentive_mechanism_runs_sync_trials(ray_session, tmp_path):
    spec = {
        "base": "incentive",
        "name": "incentive-smoke",
        "set": ["iterations=3", "eval.every=1", "data.num_clients=20", "eval.max_samples=300"],
        "search": {"incentive.delta_s": {"grid": [0.9, 0.95]}},
        "metric": {"accuracy": 1.0, "mean:util/social_welfare": 0.001},
        "num_samples": 1,
    }
    outcome = tune(spec, storage_path=str(tmp_path), verbose=0)
    t = outcome.trials
    assert len(t) == 2 and t["error"].isna().all()
    assert t["objective"].notna().all()
    assert sorted(t["config/incentive.delta_s"]) == [0.9, 0.95]
