"""Tests of rayfl.plots on small synthetic run folders written with pyarrow."""

from __future__ import annotations

import json
import pathlib
import struct
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rayfl.errors import RayflError
from rayfl.plots import _moving_average, _wants_log_y, compare_runs, plot_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
REPO = pathlib.Path(__file__).resolve().parents[1]

ALL_FIGURES = ["accuracy", "loss", "k", "staleness", "lr", "overview", "staleness_hist"]


def _write_run(
    folder: pathlib.Path,
    *,
    iterations: int = 200,
    eval_every: int = 20,
    name: str | None = "akafl-rj-test",
    minimal: bool = False,
    seed: int = 0,
) -> pathlib.Path:
    """A run folder like the engine writes; ``minimal`` keeps only iteration and train/loss."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 0])
    it = np.arange(iterations, dtype=np.int64)
    loss = 2.3 * np.exp(-it / 60) + 0.1 + rng.normal(0, 0.15, iterations)
    columns: dict[str, pa.Array] = {
        "iteration": pa.array(it),
        "train/loss": pa.array(loss),
    }
    if not minimal:
        evaluated = it % eval_every == 0
        accuracy = [
            float(0.1 + 0.85 * (1 - np.exp(-i / 50))) if e else None
            for i, e in zip(it, evaluated, strict=True)
        ]
        eval_loss = [
            float(2.3 * np.exp(-i / 60) + 0.1) if e else None
            for i, e in zip(it, evaluated, strict=True)
        ]
        mean_staleness = 1.5 + rng.random(iterations)
        columns |= {
            "sys/wall_s": pa.array(0.05 * it.astype(float)),
            "sys/virtual_time": pa.array(np.cumsum(rng.exponential(1.0, iterations))),
            "agg/k": pa.array(np.minimum(3 + it // 40, 8).astype(np.int64)),
            "agg/lr": pa.array(0.1 / (1 + it / 5.0)),  # spans > 10x: log axis
            "agg/staleness_min": pa.array(np.zeros(iterations)),
            "agg/staleness_mean": pa.array(mean_staleness),
            "agg/staleness_max": pa.array(np.ceil(mean_staleness * 2)),
            "agg/selected": pa.array(np.full(iterations, 3, dtype=np.int64)),
            "eval/accuracy": pa.array(accuracy, type=pa.float64()),
            "eval/loss": pa.array(eval_loss, type=pa.float64()),
        }
        n_updates = 4 * iterations
        pq.write_table(
            pa.table(
                {
                    "iteration": pa.array(np.repeat(it, 4)),
                    "client_id": pa.array(rng.integers(0, 10, n_updates)),
                    "version": pa.array(np.repeat(it, 4)),
                    "staleness": pa.array(rng.poisson(2.0, n_updates).astype(np.int64)),
                    "weight": pa.array(np.full(n_updates, 0.25)),
                    "loss": pa.array(rng.random(n_updates)),
                }
            ),
            folder / "updates.parquet",
        )
    pq.write_table(pa.table(columns), folder / "metrics.parquet")
    if name is not None:
        (folder / "summary.json").write_text(json.dumps({"name": name, "iterations": iterations}))
    return folder


def _png_size(path: pathlib.Path) -> tuple[int, int]:
    """(width, height) in pixels, read from the PNG header; asserts the file is a PNG."""
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_MAGIC, f"{path} is not a PNG"
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def test_plot_run_writes_every_figure(tmp_path: pathlib.Path) -> None:
    run = _write_run(tmp_path / "run")

    paths = plot_run(run)

    expected = [run / "plots" / f"{stem}.png" for stem in ALL_FIGURES]
    assert paths == expected
    assert sorted(p.name for p in (run / "plots").iterdir()) == sorted(p.name for p in expected)
    for path in paths:
        width, height = _png_size(path)
        assert path.stat().st_size > 10_000, path
        assert width > 300 and height > 300, (path, width, height)
    # two panels side by side: iteration and virtual time
    for stem in ["accuracy", "loss", "k", "staleness", "lr"]:
        width, height = _png_size(run / "plots" / f"{stem}.png")
        assert width >= 2 * height, stem
    width, height = _png_size(run / "plots" / "overview.png")  # 2x3 grid
    assert 1.5 * height < width < 3 * height


def test_plot_run_out_dir(tmp_path: pathlib.Path) -> None:
    run = _write_run(tmp_path / "run")
    out = tmp_path / "figures" / "nested"

    paths = plot_run(str(run), out_dir=str(out))

    assert [p.parent for p in paths] == [out] * len(ALL_FIGURES)
    assert not (run / "plots").exists()


def test_plot_run_minimal_run_skips_absent_figures(tmp_path: pathlib.Path) -> None:
    run = _write_run(tmp_path / "minimal", minimal=True, name=None)

    paths = plot_run(run)

    assert [p.name for p in paths] == ["loss.png", "overview.png"]
    assert sorted(p.name for p in (run / "plots").iterdir()) == ["loss.png", "overview.png"]
    # no clock recorded: the loss figure has a single panel
    width, height = _png_size(run / "plots" / "loss.png")
    assert width < 2 * height


def test_plot_run_all_null_column_is_skipped(tmp_path: pathlib.Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    table = pa.table(
        {
            "iteration": pa.array(np.arange(50, dtype=np.int64)),
            "train/loss": pa.array(np.linspace(2.0, 0.5, 50)),
            "eval/accuracy": pa.array([None] * 50, type=pa.float64()),
        }
    )
    pq.write_table(table, run / "metrics.parquet")

    assert [p.name for p in plot_run(run)] == ["loss.png", "overview.png"]


@pytest.mark.parametrize("make_folder", [True, False])
def test_plot_run_not_a_run_folder(tmp_path: pathlib.Path, make_folder: bool) -> None:
    folder = tmp_path / "not-a-run"
    if make_folder:
        folder.mkdir()
        (folder / "config.yaml").write_text("seed: 0\n")

    with pytest.raises(RayflError, match="metrics.parquet") as info:
        plot_run(folder)

    message = str(info.value)
    assert "\n" not in message
    assert str(folder) in message and "rayfl run" in message


def test_compare_runs_writes_png(tmp_path: pathlib.Path) -> None:
    runs = [
        _write_run(tmp_path / "a", name="wkafl", seed=1),
        _write_run(tmp_path / "b", name=None, seed=2),  # legend falls back to the folder name
    ]
    out = tmp_path / "compare" / "accuracy.png"

    for metric, x in [("eval/accuracy", "iteration"), ("train/loss", "sys/virtual_time")]:
        path = compare_runs(runs, out, metric=metric, x=x)
        assert path == out
        width, height = _png_size(out)
        assert out.stat().st_size > 10_000
        assert width > 300 and height > 300


def test_compare_runs_missing_metric(tmp_path: pathlib.Path) -> None:
    full = _write_run(tmp_path / "full")
    minimal = _write_run(tmp_path / "minimal", minimal=True)

    with pytest.raises(RayflError, match="eval/accuracy"):
        compare_runs([full, minimal], tmp_path / "out.png")
    with pytest.raises(RayflError, match="metrics.parquet"):
        compare_runs([full, tmp_path / "missing"], tmp_path / "out.png")
    with pytest.raises(RayflError, match="no run folders"):
        compare_runs([], tmp_path / "out.png")


def test_moving_average_by_hand() -> None:
    y = np.array([1.0, 2.0, 3.0, 4.0, 10.0])
    np.testing.assert_allclose(_moving_average(y, 2), [1.0, 1.5, 2.5, 3.5, 7.0])
    np.testing.assert_allclose(_moving_average(y, 3), [1.0, 1.5, 2.0, 3.0, 17 / 3])
    np.testing.assert_allclose(_moving_average(y, 1), y)
    np.testing.assert_allclose(_moving_average(y[:2], 5), [1.0, 1.5])


def test_log_axis_only_for_wide_positive_ranges() -> None:
    assert _wants_log_y(np.array([0.1, 0.05, 0.001]))
    assert not _wants_log_y(np.array([0.1, 0.05, 0.02]))
    assert not _wants_log_y(np.array([0.0, 0.1, 5.0]))
    assert not _wants_log_y(np.array([np.nan]))


def test_import_is_cheap() -> None:
    code = "import sys, rayfl.plots; print(sorted({'matplotlib', 'pyarrow'} & set(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
