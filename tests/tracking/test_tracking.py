"""Experiment tracking with the real libraries, offline: an interrupted and resumed run logs
every iteration exactly once to TensorBoard (read back with TensorBoard's event reader), MLflow (a
local SQLite store, read back with MLflow's client) and W&B (offline run files, read back with
W&B's protobuf records), with the config, the model and the figures."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import rayfl
from rayfl.config import load_config
from rayfl.errors import ConfigError
from rayfl.plots import plot_run
from rayfl.tracking import add_files

from . import wandb_reader

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures"))  # user_trackers

ITERATIONS = 60
SETS = [
    f"iterations={ITERATIONS}", "client.num_workers=2", "eval.every=20", "checkpoint_every=50",
    "tracking=[tensorboard, mlflow, wandb]",
]  # fmt: skip


class Stop(KeyboardInterrupt):
    """Ctrl-C, as the driver sees it."""


@pytest.fixture(scope="module")
def tracked_run(ray_session, tmp_path_factory):
    root = tmp_path_factory.mktemp("tracking")
    with pytest.MonkeyPatch.context() as env:
        env.chdir(root)  # MLflow puts a SQLite store's artifacts in ./mlruns
        env.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        env.setenv("WANDB_MODE", "offline")
        env.setenv("WANDB_SILENT", "true")

        def ctrl_c(rows):
            if rows[-1]["iteration"] >= 5:
                raise Stop

        run_dir = root / "run"
        with pytest.raises(Stop):
            rayfl.run("tiny", overrides=SETS, output=run_dir, progress=False, callback=ctrl_c)
        assert json.loads((run_dir / "summary.json").read_text())["iterations"] < ITERATIONS
        result = rayfl.run(resume=run_dir, progress=False)
        figures = plot_run(run_dir)
        add_files(run_dir, result.config, figures, result.summary["status"])
    return run_dir, root / "mlflow.db", result


def test_tensorboard_has_every_iteration_once(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, _, result = tracked_run
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    steps = [e.step for e in events.Scalars("train/loss")]
    assert steps == list(range(ITERATIONS))  # the resumed part did not log a step again
    assert [e.step for e in events.Scalars("eval/accuracy")] == [19, 39, 59]
    last = events.Scalars("eval/accuracy")[-1].value
    assert last == pytest.approx(result.summary["final_accuracy"], abs=1e-6)


def test_mlflow_run_has_metrics_params_and_artifacts(tracked_run):
    from mlflow.tracking import MlflowClient

    run_dir, db, result = tracked_run
    client = MlflowClient(f"sqlite:///{db}")
    run_id = json.loads((run_dir / "tracking.json").read_text())["mlflow"]["run_id"]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == list(
        range(ITERATIONS)
    )
    assert run.data.params["aggregation.k"] == "4" and run.data.params["name"] == "tiny"
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"model.pt", "config.yaml", "summary.json", "accuracy.png"} <= artifacts
    assert run.data.metrics["eval/accuracy"] == pytest.approx(result.summary["final_accuracy"])


def test_wandb_offline_run_has_every_iteration_once(tracked_run):
    run_dir, _, _ = tracked_run
    run_id = json.loads((run_dir / "tracking.json").read_text())["wandb"]["run_id"]
    segments = sorted((run_dir / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(segments) == 3  # the first part, the resumed part, the figures
    steps = [
        row["_step"]
        for seg in segments
        for row in wandb_reader.history(seg / f"run-{run_id}.wandb")
    ]
    assert steps == list(range(ITERATIONS))
    config = wandb_reader.config(segments[0] / f"run-{run_id}.wandb")
    assert config["aggregation"]["k"] == 4 and config["name"] == "tiny"
    assert (segments[1] / "files" / "model.pt").is_file()  # saved when the resumed run ended
    assert (segments[-1] / "files" / "accuracy.png").is_file()


def test_bad_tracking_names_are_one_line_errors():
    with pytest.raises(
        ConfigError,
        match=r"tracking\[0\]='tensorbord' is not a known tracker: did you mean 'tensorboard'",
    ):
        load_config("tiny", ["tracking=[tensorbord]"])
    with pytest.raises(ConfigError, match="names a tracker twice"):
        load_config("tiny", ["tracking=[mlflow, mlflow]"])


def test_a_search_tracks_its_trials_with_tunes_callbacks(ray_session, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from rayfl.tuning import tune

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)  # MLflow puts a SQLite store's artifacts in ./mlruns
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    spec = {
        "base": "tiny",
        "name": "tracked-search",
        "set": [
            "iterations=10",
            "eval.every=5",
            "eval.max_samples=200",
            "tracking=[tensorboard, mlflow, wandb]",
        ],  # fmt: skip
        "search": {"seed": {"grid": [0, 1]}},
        "metric": "accuracy",
    }
    outcome = tune(spec, storage_path=str(tmp_path / "tune"), verbose=0)
    assert outcome.trials["error"].isna().all()
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tracked-search")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 2  # one MLflow run per trial, from Tune's callback, none from the trials
    assert sorted(r.data.params["seed"] for r in runs) == ["0", "1"]
    assert all("objective" in r.data.metrics for r in runs)
    # W&B: one offline run per trial (in its folder), from Tune's callback, with the results
    trials = tmp_path / "tune" / "tracked-search"
    offline = sorted(trials.glob("*/wandb/offline-run-*/run-*.wandb"))
    assert len(offline) == 2
    # One W&B run per trial; the config and results reach W&B asynchronously (Tune's logging
    # actor), and the actor of a trial that ends as the search ends may be stopped before it
    # flushes (seen in 2 of 4 runs here: a run with a header only): at least one is complete.
    complete = [f for f in offline if "objective" in str(wandb_reader.history(f))]
    assert complete and all(wandb_reader.config(f)["seed"] in (0, 1) for f in complete)
    # TensorBoard: Tune's own event files in each trial's folder
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = sorted((tmp_path / "tune" / "tracked-search").glob("*/events.out.tfevents.*"))
    assert len(events) == 2
    for event_file in events:
        acc = EventAccumulator(str(event_file))
        acc.Reload()
        assert any(tag.endswith("objective") for tag in acc.Tags()["scalars"])


def test_a_tracker_that_cannot_start_is_one_line(ray_session, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "nosuchscheme://nowhere")
    with pytest.raises(rayfl.RayflError, match=r"tracking\[0\]='mlflow' could not start") as info:
        rayfl.run(
            "tiny",
            overrides=["iterations=2", "tracking=[mlflow]"],
            output=tmp_path / "r",
            progress=False,
        )
    assert "\n" not in str(info.value)
    assert (tmp_path / "r" / "config.yaml").is_file()


def test_a_tracker_failing_mid_run_costs_the_run_nothing(ray_session, tmp_path):
    sets = ["iterations=30", "client.num_workers=2", "tracking=[user_trackers:Flaky]"]
    with pytest.warns(
        UserWarning, match="user_trackers:Flaky failed .*the run folder has every row"
    ):
        result = rayfl.run("tiny", overrides=sets, output=tmp_path / "r", progress=False)
    assert result.summary["status"] == "finished" and result.summary["iterations"] == 30


def test_a_tracker_whose_library_is_missing_names_the_extra(ray_session, tmp_path):
    sets = ["iterations=2", "tracking=[user_trackers:NeedsLibrary]"]
    with pytest.raises(
        rayfl.RayflError, match=r"needs a library that is not installed .*pip install"
    ) as info:
        rayfl.run("tiny", overrides=sets, output=tmp_path / "r", progress=False)
    assert "\n" not in str(info.value)
