"""End to end through the real CLI in a subprocess (CleanRL style), with tiny budgets."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest


def rayfl(*args, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "rayfl.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_presets_lists_the_shipped_presets():
    out = rayfl("presets")
    assert out.returncode == 0
    names = [line.split()[0] for line in out.stdout.splitlines()]
    assert {"wkafl", "kasync", "tiny"} <= set(names)


def test_run_then_plot(ray_address, tmp_path):
    run_dir = tmp_path / "run"
    out = rayfl(
        "run",
        "tiny",
        "--set",
        "iterations=20",
        "--set",
        "client.num_workers=2",
        "--output",
        str(run_dir),
        "--address",
        ray_address,
        "--no-progress",
    )
    assert out.returncode == 0, out.stderr
    assert f"results: {run_dir}" in out.stdout
    assert "final accuracy" in out.stdout
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["iterations"] == 20 and summary["status"] == "finished"
    assert pq.read_table(run_dir / "metrics.parquet").num_rows == 20
    assert (run_dir / "plots" / "accuracy.png").exists()
    # The resolved config runs unchanged with `rayfl run`.
    again = rayfl("run", str(run_dir / "config.yaml"), "--print-config")
    assert again.returncode == 0 and "iterations: 20" in again.stdout
    plot = rayfl("plot", str(run_dir), "--out", str(tmp_path / "figs"))
    assert plot.returncode == 0, plot.stderr
    assert (tmp_path / "figs" / "loss.png").exists()
    # A second run into the same folder is refused, and the first run's files stay.
    clash = rayfl("run", "tiny", "--output", str(run_dir), "--address", ray_address)
    assert clash.returncode == 2 and "already holds a run" in clash.stderr
    assert pq.read_table(run_dir / "metrics.parquet").num_rows == 20


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run", "tiny", "--set", "aggregation.k=0"], "aggregation.k"),
        (["run", "tiny", "--set", "data.num_clients=abc"], "data.num_clients"),
        (["run", "tiny", "--set", "model.name=resnet"], "model.name"),
        (["run", "no-such-preset"], "no preset named"),
        (["run", "missing.yaml"], "does not exist"),
        (["plot", "/nonexistent/run"], "metrics.parquet"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, needle):
    out = rayfl(*args)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert needle in lines[0] and "Traceback" not in out.stderr


def test_data_that_is_not_there(tmp_path, ray_address):
    out = rayfl(
        "run",
        "tiny",
        "--set",
        "data.dataset=cifar10",
        "--set",
        f"data.data_dir={tmp_path}",
        "--output",
        str(tmp_path / "r"),
        "--address",
        ray_address,
    )
    assert out.returncode == 2
    assert "data.download" in out.stderr and "Traceback" not in out.stderr


def test_unwritable_output(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = rayfl("run", "tiny", "--output", str(blocker / "sub"))
    assert out.returncode == 2 and "--output" in out.stderr


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["reproduce", "nothing"], "reproduction 'nothing' does not exist"),
        (["reproduce", "akafl", "--seeds", "0"], "--seeds=0 is below 1"),
        (["reproduce", "akafl", "--iterations", "0"], "--iterations=0 is below 1"),
        (["reproduce", "akafl", "--only", "stale,nope"], "--only nope: no such group"),
        (["reproduce", "incentive", "--only", "a"], "--only is for `rayfl reproduce akafl`"),
        (["run", "--resume", "/nonexistent/run"], "no such folder"),
        (["run", "tiny", "--set", "client.faults={kind: nan}"], "client.faults.client_ids"),
    ],
)
def test_more_bad_input_is_one_line(argv, needle, capsys):
    from rayfl.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err
