"""Flush cost against run length: the whole-file rewrite of rayfl <= 0.1 (``append_rows``, kept
here for the comparison) against the part log (``rayfl.partlog``), side by side in one run.

A synthetic run writes its updates table (K = 10 rows per iteration, 7 columns, as
updates.parquet) in one flush per ``--every`` iterations, for each run length T. Printed, and
saved as JSON with ``--out``: the total flush time, the last flush's time, and the bytes written.

    python benchmarks/flush.py --lengths 1000 5000 20000 --every 100 --out benchmarks/results-flush.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rayfl.partlog import PartLog, rows_table, unify, write_parquet

K = 10


def rows(t0: int, t1: int, rng: np.random.Generator) -> list[dict]:
    out = []
    for t in range(t0, t1):
        for c in rng.integers(0, 100, size=K):
            out.append(
                {"iteration": t, "client_id": int(c), "version": t - 2, "staleness": 2,
                 "weight": float(rng.random()), "loss": float(rng.random()), "worker": int(c % 4)}
            )  # fmt: skip
    return out


def rewrite_append(path: Path, new: list[dict]) -> None:
    """rayfl <= 0.1's flush: copy every earlier row group, add the rows, rename."""
    table = rows_table(new)
    if path.is_file():
        table = unify([pq.read_table(path), table])
    write_parquet(path, table)


def measure(length: int, every: int, kind: str) -> dict:
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "updates.parquet"
        log = PartLog(path)
        times = []
        for t0 in range(0, length, every):
            batch = rows(t0, min(length, t0 + every), rng)
            start = time.perf_counter()
            log.append(batch) if kind == "parts" else rewrite_append(path, batch)
            times.append(time.perf_counter() - start)
        start = time.perf_counter()
        if kind == "parts":
            log.compact()
        compact_s = time.perf_counter() - start
        assert pq.read_metadata(path).num_rows == length * K
        size = sum(f.stat().st_size for f in Path(d).rglob("*") if f.is_file())
    return {
        "kind": kind, "iterations": length, "flushes": len(times), "flush_total_s": sum(times),
        "last_flush_s": times[-1], "compact_s": compact_s, "bytes": size,
    }  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[1000, 5000, 20000])
    p.add_argument("--every", type=int, default=100, help="iterations per flush")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    results = []
    for length in args.lengths:
        for kind in ("rewrite", "parts"):  # side by side, same rows
            r = measure(length, args.every, kind)
            results.append(r)
            print(
                f"T={length:>6} {kind:>8}: {r['flushes']:>4} flushes, total {r['flush_total_s']:7.3f} s, "
                f"last {1000 * r['last_flush_s']:7.2f} ms, compaction {1000 * r['compact_s']:6.1f} ms"
            )
    if args.out:
        machine = {
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "pyarrow": pa.__version__,
        }
        args.out.write_text(
            json.dumps({"machine": machine, "every": args.every, "results": results}, indent=1)
        )


if __name__ == "__main__":
    main()
