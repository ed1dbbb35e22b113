"""Checkpoint and resume on a real Ray: a resumed run ends bit-identical to an unbroken one."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

import rayfl
from rayfl.cli import main
from rayfl.runtime.checkpoint import read_checkpoint

CONTROLS = (
    "aggregation.control={adaptive_k: {eps_k: 0.3, rho: 0.01, k_min: 2}, remodel: {eps_r: 6}, "
    "judgement: {eps_m: 0.5, t_min_fraction: 0.2, theta_0: 0.01, kappa: 3.0, delta1: 0.9, "
    "delta2: 0.9, eval_every: 5}}"
)
OVERRIDES = ["client.num_workers=2", "iterations=60", "checkpoint_every=20", CONTROLS]


class Stop(KeyboardInterrupt):
    """Ctrl-C, as the driver sees it."""


def test_interrupted_and_resumed_run_equals_an_unbroken_run(ray_session, tmp_path):
    clean = rayfl.run("tiny", overrides=OVERRIDES, output=tmp_path / "clean", progress=False)
    assert clean.summary["remodels"] > 0  # the controls really ran and have state to save

    def ctrl_c(rows):
        if rows[-1]["iteration"] >= 13:
            raise Stop

    broken = tmp_path / "broken"
    # No periodic checkpoint before the interrupt: Ctrl-C itself leaves one.
    late = [*OVERRIDES, "checkpoint_every=50"]
    with pytest.raises(Stop):
        rayfl.run("tiny", overrides=late, output=broken, progress=False, callback=ctrl_c)
    # What Ctrl-C leaves: readable metrics, and a checkpoint that matches them exactly.
    state = read_checkpoint(broken)
    rows = pq.read_table(broken / "metrics.parquet").to_pandas()
    assert 14 <= state["t"] <= 40  # the chunks in flight at Ctrl-C are kept
    assert list(rows["iteration"]) == list(range(state["t"]))
    assert "rayfl run --resume" in (broken / "summary.json").read_text()

    resumed = rayfl.run("tiny", resume=broken, progress=False)
    assert resumed.run_dir == broken
    assert resumed.weights.tobytes() == clean.weights.tobytes()
    metrics = pq.read_table(broken / "metrics.parquet").to_pandas()
    assert list(metrics["iteration"]) == list(range(60))  # each iteration exactly once
    updates = pq.read_table(broken / "updates.parquet").to_pandas()
    assert int(metrics["agg/k"].sum()) == len(updates) == resumed.summary["updates_aggregated"]
    assert resumed.summary["remodels"] == clean.summary["remodels"]
    assert resumed.summary["jobs_lost"] == clean.summary["jobs_lost"] == 0
    assert resumed.summary["maintained"] == clean.summary["maintained"]
    clean_metrics = clean.metrics.to_pandas()
    assert metrics["agg/k"].tolist() == clean_metrics["agg/k"].tolist()
    assert metrics["eval/accuracy"].dropna().tolist() == (
        clean_metrics["eval/accuracy"].dropna().tolist()
    )

    # A finished run cannot be resumed further without more iterations; with them it can.
    with pytest.raises(rayfl.RayflError, match="already ran 60 of 60"):
        rayfl.run(resume=broken, progress=False)
    longer = rayfl.run(resume=broken, overrides=["iterations=70"], progress=False)
    assert len(longer.metrics) == 70


def _cli_error(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_resume_bad_folders_fail_in_one_line(tmp_path, capsys):
    assert "no such folder" in _cli_error(capsys, ["run", "--resume", str(tmp_path / "nope")])
    assert "not a rayfl run folder" in _cli_error(capsys, ["run", "--resume", str(tmp_path)])
    (tmp_path / "config.yaml").write_text("name: x\n")
    assert "no checkpoint yet" in _cli_error(capsys, ["run", "--resume", str(tmp_path)])
    (tmp_path / "checkpoint.npz").write_bytes(b"PK\x03\x04 truncated")
    assert "unreadable" in _cli_error(capsys, ["run", "--resume", str(tmp_path)])
    assert "drop the config" in _cli_error(capsys, ["run", "tiny", "--resume", str(tmp_path)])


def test_checkpoints_hold_no_pickle_and_old_ones_convert_on_request(tmp_path, capsys, monkeypatch):
    """A checkpoint is JSON + numeric arrays; resuming never loads a pickle; a checkpoint.pkl of
    rayfl <= 0.1 is refused with the command that converts it, which loads it only then."""
    import pickle

    import numpy as np

    from rayfl.runtime.checkpoint import write_checkpoint

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("name: x\n")
    state = {"t": 3, "w": np.arange(4, dtype=np.float32), "rule_state": ((None,), ())}
    write_checkpoint(run, state)
    with np.load(run / "checkpoint.npz", allow_pickle=False) as npz:  # no object arrays inside
        assert all(npz[k].dtype != object for k in npz.files)

    def no_pickle(*args, **kwargs):
        raise AssertionError("a pickle was loaded")

    with monkeypatch.context() as m:
        m.setattr(pickle, "load", no_pickle)
        m.setattr(pickle, "loads", no_pickle)
        back = read_checkpoint(run)
    assert back["t"] == 3 and back["w"].tobytes() == state["w"].tobytes()

    old = tmp_path / "old"
    old.mkdir()
    (old / "config.yaml").write_text("name: x\n")
    (old / "checkpoint.pkl").write_bytes(pickle.dumps({"t": 5, "w": np.ones(2, np.float32)}))
    error = _cli_error(capsys, ["run", "--resume", str(old)])
    assert "is a pickle (checkpoint.pkl" in error and f"rayfl checkpoint convert {old}" in error
    assert main(["checkpoint", "convert", str(old)]) == 0
    assert read_checkpoint(old)["t"] == 5


def test_a_checkpoint_of_another_state_format_is_one_line(tmp_path, capsys):
    import json

    import numpy as np

    (tmp_path / "config.yaml").write_text("name: x\n")
    text = json.dumps({"safestate": 99, "state": {"dict": []}}).encode()
    np.savez(tmp_path / "checkpoint.npz", __state__=np.frombuffer(text, dtype=np.uint8))
    assert "has state format 99, this rayfl reads 1" in _cli_error(
        capsys, ["run", "--resume", str(tmp_path)]
    )
