"""Run results on disk: per-iteration metrics and per-update records as Parquet, and a summary.

Metric keys carry a prefix (CleanRL): ``train/loss``, ``eval/accuracy``, ``agg/k``,
``agg/staleness_mean``, ``agg/lr``, ``sys/wall_s``, ``sys/virtual_time``. Files are rewritten
atomically (write to a temporary file, then rename), so whatever was written last is always a
complete, readable Parquet file, even if the run is interrupted.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

METRICS_FILE = "metrics.parquet"
UPDATES_FILE = "updates.parquet"
SUMMARY_FILE = "summary.json"
CONFIG_FILE = "config.yaml"
MODEL_FILE = "model.pt"
CHECKPOINT_FILE = "checkpoint.pkl"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` via a temporary file and a rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    columns: dict[str, None] = {}
    for r in rows:
        for key in r:
            columns.setdefault(key, None)
    data = {c: [r.get(c) for r in rows] for c in columns}
    return pa.table(data)


def write_table(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Writes rows (dicts; missing keys become nulls) as a Parquet file, atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(_table(rows), tmp)
    os.replace(tmp, path)


class RunLog:
    """Collects metric and update rows and keeps the run folder's Parquet files current."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.metrics: list[dict[str, Any]] = []
        self.updates: list[dict[str, Any]] = []

    def extend(self, metrics: Iterable[dict[str, Any]], updates: Iterable[dict[str, Any]]) -> None:
        self.metrics.extend(metrics)
        self.updates.extend(updates)

    def load(self, before_iteration: int) -> None:
        """Reads the rows already in the run folder (a resumed run), up to ``before_iteration``."""
        for name, rows in ((METRICS_FILE, self.metrics), (UPDATES_FILE, self.updates)):
            path = self.run_dir / name
            if path.is_file():
                rows[:] = [
                    r for r in pq.read_table(path).to_pylist() if r["iteration"] < before_iteration
                ]
                for r in rows:  # Parquet wrote missing keys as nulls: drop them again
                    for key in [k for k, v in r.items() if v is None]:
                        del r[key]

    def flush(self) -> None:
        """Rewrites metrics.parquet and updates.parquet with everything so far."""
        if self.metrics:
            write_table(self.run_dir / METRICS_FILE, self.metrics)
        if self.updates:
            write_table(self.run_dir / UPDATES_FILE, self.updates)

    def last_eval(self) -> dict[str, Any] | None:
        for row in reversed(self.metrics):
            if row.get("eval/accuracy") is not None:
                return row
        return None


def summarize(metrics: Sequence[Mapping[str, Any]], last_n: int = 100) -> dict[str, Any]:
    """Headline numbers of a run: final/best/mean-of-last accuracy, times, staleness, K."""
    evals = [r for r in metrics if r.get("eval/accuracy") is not None]
    acc = np.array([r["eval/accuracy"] for r in evals], dtype=float)
    its = np.array([r["iteration"] for r in evals], dtype=float)
    out: dict[str, Any] = {"iterations": len(metrics)}
    if len(metrics):
        last = metrics[-1]
        out["wall_s"] = float(last.get("sys/wall_s", math.nan))
        out["virtual_time"] = float(last.get("sys/virtual_time", math.nan))
        out["mean_k"] = float(np.mean([r.get("agg/k", math.nan) for r in metrics]))
        out["mean_staleness"] = float(
            np.mean([r.get("agg/staleness_mean", math.nan) for r in metrics])
        )
        out["final_train_loss"] = float(
            np.mean([r.get("train/loss", math.nan) for r in metrics[-min(len(metrics), 20) :]])
        )
        server = [r["sys/server_s"] for r in metrics if "sys/server_s" in r]
        if server:
            out["server_s_per_iteration"] = float(np.median(server))
    if len(acc):
        tail = its >= (its.max() - last_n) if len(its) else np.ones_like(acc, dtype=bool)
        out["final_accuracy"] = float(acc[-1])
        out["best_accuracy"] = float(acc.max())
        out[f"mean_accuracy_last_{last_n}"] = float(acc[tail].mean())
        out["final_eval_loss"] = float(evals[-1].get("eval/loss", math.nan))
    return out


def write_summary(run_dir: Path, summary: Mapping[str, Any]) -> None:
    atomic_write_bytes(run_dir / SUMMARY_FILE, (json.dumps(summary, indent=2) + "\n").encode())


def read_metrics(run_dir: str | os.PathLike) -> pa.Table:
    """The metrics table of a run folder."""
    return pq.read_table(Path(run_dir) / METRICS_FILE)
