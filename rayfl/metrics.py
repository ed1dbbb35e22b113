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
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa

from rayfl import heap
from rayfl.partlog import PartLog, rows_table, write_parquet

METRICS_FILE = "metrics.parquet"
UPDATES_FILE = "updates.parquet"
SUMMARY_FILE = "summary.json"
CONFIG_FILE = "config.yaml"
MODEL_FILE = "model.pt"

CHECKPOINT_FILE = "checkpoint.npz"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` via a temporary file and a rename."""
    atomic_write(path, lambda f: f.write(data))


def _tmp(path: Path) -> Path:
    """The temporary file next to ``path`` that an atomic write fills before the rename."""
    return path.with_name(f".{path.name}.tmp")


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """``write(f)`` fills a temporary file next to ``path``, which then replaces ``path``."""
    tmp = _tmp(path)
    with open(tmp, "wb") as f:
        write(f)
    os.replace(tmp, path)


def write_table(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Writes rows (dicts; missing keys become nulls) as a Parquet file, atomically."""
    write_parquet(path, rows_table(rows))


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a run's table (its file and the parts appended since the last compaction,
    :mod:`rayfl.partlog`) as dicts without their null entries (as they were written)."""
    return PartLog(path).rows()


class RunLog:
    """Writes a run's metric and update rows to the run folder's Parquet files as they come.

    Only the rows since the last :meth:`flush` stay in memory (plus the last row and the last
    evaluation, for the progress bar), so a long run's driver does not grow with its length.
    Each flush appends a part (:class:`~rayfl.partlog.PartLog`: O(new rows) I/O, every part
    complete on disk); :meth:`compact` folds the parts into ``metrics.parquet`` and
    ``updates.parquet`` when the run ends. Flushes back off so that they never take more than
    about 5 % of the wall time.
    """

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.files = {
            METRICS_FILE: PartLog(run_dir / METRICS_FILE),
            UPDATES_FILE: PartLog(run_dir / UPDATES_FILE),
        }
        self._metrics: list[dict[str, Any]] = []  # not yet on disk
        self._updates: list[dict[str, Any]] = []
        self.last: dict[str, Any] | None = None  # the last metric row
        self._last_eval: dict[str, Any] | None = None
        self.iterations_done = 0  # last iteration logged + 1
        self._flushed_at = -math.inf
        self._flush_cost = 0.0

    def extend(self, metrics: Iterable[dict[str, Any]], updates: Iterable[dict[str, Any]]) -> None:
        metrics = list(metrics)
        self._metrics.extend(metrics)
        self._updates.extend(updates)
        for row in metrics:
            if row.get("eval/accuracy") is not None:
                self._last_eval = row
        if metrics:
            self.last = metrics[-1]
            self.iterations_done = metrics[-1]["iteration"] + 1

    def load(self, before_iteration: int) -> None:
        """A resumed run: keeps the rows already in the run folder up to ``before_iteration``
        (the checkpoint's iteration) and drops any written after it."""
        self._metrics.clear()
        self._updates.clear()
        self.trim(before_iteration)
        rows = read_rows(self.run_dir / METRICS_FILE)
        self.last = rows[-1] if rows else None
        self.iterations_done = rows[-1]["iteration"] + 1 if rows else 0
        evals = [r for r in rows if r.get("eval/accuracy") is not None]
        self._last_eval = evals[-1] if evals else None

    def trim(self, before_iteration: int) -> None:
        """Drops every row (on disk and in memory) of iteration ``before_iteration`` or later."""
        for name, pending in ((METRICS_FILE, self._metrics), (UPDATES_FILE, self._updates)):
            pending[:] = [r for r in pending if r["iteration"] < before_iteration]
            self.files[name].trim("iteration", before_iteration)
        if self.last is not None and self.last["iteration"] >= before_iteration:
            rows = self._metrics or read_rows(self.run_dir / METRICS_FILE)
            self.last = rows[-1] if rows else None
        self.iterations_done = min(self.iterations_done, before_iteration)

    def flush(self, *, force: bool = True) -> bool:
        """Appends the rows since the last flush to metrics.parquet and updates.parquet.

        With ``force=False`` it skips (returns False) while the last flush is too recent: at
        most one every 5 s, and never more often than 20 times its own cost."""
        now = time.perf_counter()
        if not force and now - self._flushed_at < max(5.0, 20 * self._flush_cost):
            return False
        for name, pending in ((METRICS_FILE, self._metrics), (UPDATES_FILE, self._updates)):
            # A SIGTERM (raised as KeyboardInterrupt, rayfl.interrupts) between an append and
            # the clear below would leave rows both on disk and pending: what the disk already
            # holds is never appended again.
            log = self.files[name]
            on_disk = log.last("iteration") if pending else None
            log.append([r for r in pending if on_disk is None or r["iteration"] > on_disk])
            pending.clear()
        # pyarrow's allocator (mimalloc) keeps the pages of every merge of the parts: without
        # this the soak benchmark's driver grew by ~90 MB per 400 flushes (whole rewrites then).
        pa.default_memory_pool().release_unused()
        heap.trim()  # and glibc its freed pages (rayfl.heap): a flush is at most every 5 s
        self._flushed_at = time.perf_counter()
        self._flush_cost = self._flushed_at - now
        return True

    def compact(self) -> None:
        """Folds the parts into ``metrics.parquet`` and ``updates.parquet`` (the run's end)."""
        for log in self.files.values():
            log.compact()

    def rows(self) -> list[dict[str, Any]]:
        """Every metric row of the run so far (read back from disk, plus the pending ones)."""
        return [*read_rows(self.run_dir / METRICS_FILE), *self._metrics]

    def last_eval(self) -> dict[str, Any] | None:
        return self._last_eval


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
    """The metrics table of a run folder (with the parts a crashed run left, if any)."""
    return PartLog(Path(run_dir) / METRICS_FILE).table()
