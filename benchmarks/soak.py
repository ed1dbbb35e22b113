"""Soak: the quick AKAFL-RJ preset for a long time with a client worker killed every 2 minutes.

Runs ``akafl-rj`` (iterations raised so it cannot finish first) for ``--minutes``, kills one of
the run's client worker processes (SIGKILL, chosen by a seeded generator) every ``--kill-every``
seconds, then asks the run to stop cleanly and reports:

- iterations done and worker failures seen by the server;
- updates lost: jobs started minus jobs aggregated, rejected, dropped by remodel and still live
  (the server's own bookkeeping; must be 0), and whether metrics and updates add up;
- memory (PSS of the whole Ray session, sampled every 5 s, by kind of process): after warm-up
  (the first ``--warmup`` seconds), the peak of the last window against the peak of the first
  (must not grow) and the straight-line trend.

    python benchmarks/soak.py [--minutes 30] [--kill-every 120] [--warmup 180]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow.parquet as pq

import rayfl
from rayfl import seeding


def _group(p: psutil.Process) -> str:
    """What a process of the session is: driver, gcs, raylet, server, worker or other."""
    try:
        cmd = " ".join(p.cmdline())
    except psutil.Error:
        return "other"
    for key, name in (
        ("ray::KAsyncServer", "server"),
        ("ray::ClientWorker", "worker"),
        ("gcs_server", "gcs"),
        ("raylet", "raylet"),
    ):
        if key in cmd:
            return name
    return "driver" if p.pid == os.getpid() else "other"


def session_memory() -> tuple[dict[str, int], dict[str, int]]:
    """PSS and USS of the whole Ray session (this process and its descendants), by kind of
    process. PSS adds up to the session's memory; USS (pages no other process maps) says which
    process grew, as a worker restart moves shared pages' PSS onto the others."""
    me = psutil.Process()
    pss: dict[str, int] = {}
    uss: dict[str, int] = {}
    for p in [me, *me.children(recursive=True)]:
        try:
            info = p.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        g = _group(p)
        pss[g] = pss.get(g, 0) + getattr(info, "pss", info.rss)
        uss[g] = uss.get(g, 0) + getattr(info, "uss", info.rss)
    return pss, uss


def worker_pids() -> list[int]:
    """Client worker processes of this session's Ray (never another Ray on the same host)."""
    pids = []
    for p in psutil.Process().children(recursive=True):
        try:
            if " ".join(p.cmdline()).startswith("ray::ClientWorker"):
                pids.append(p.pid)
        except psutil.Error:
            continue
    return sorted(pids)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--kill-every", type=float, default=120.0)
    ap.add_argument("--warmup", type=float, default=180.0)
    ap.add_argument("--out", default=str(Path(__file__).with_name("results-soak.json")))
    args = ap.parse_args()

    rng = seeding.rng(0, 9001)
    t0 = time.monotonic()
    next_kill = t0 + args.kill_every
    next_sample = t0
    kills: list[dict] = []
    by_kind: list[tuple[float, dict[str, int]]] = []
    uss_by_kind: list[tuple[float, dict[str, int]]] = []

    def tick(rows: list[dict]) -> bool:
        nonlocal next_kill, next_sample
        now = time.monotonic()
        if now >= next_sample:
            parts, private = session_memory()
            by_kind.append((now - t0, parts))
            uss_by_kind.append((now - t0, private))
            next_sample = now + 5.0
        if now >= next_kill:
            pids = worker_pids()
            if pids:
                victim = pids[int(rng.integers(len(pids)))]
                os.kill(victim, signal.SIGKILL)
                kills.append({"at_s": now - t0, "iteration": rows[-1]["iteration"], "pid": victim})
                print(f"soak: killed worker pid {victim} at iteration {rows[-1]['iteration']}")
            next_kill = now + args.kill_every
        return now - t0 >= args.minutes * 60

    out_dir = Path(tempfile.mkdtemp(prefix="rayfl-soak-"))
    result = rayfl.run(
        "akafl-rj",
        overrides=["iterations=1000000", "checkpoint_every=500"],
        output=out_dir / "run",
        progress=False,
        callback=tick,
    )
    s = result.summary
    metrics = pq.read_table(result.run_dir / "metrics.parquet").to_pandas()
    updates = pq.read_table(result.run_dir / "updates.parquet").to_pandas()
    report = {
        "machine": f"{platform.node()} ({os.cpu_count()} CPUs), no GPU",
        "command": "python benchmarks/soak.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out"),
        "minutes": args.minutes,
        "iterations": int(s["iterations"]),
        "workers_killed": len(kills),
        "worker_failures_seen": s.get("worker_failures"),
        "jobs_lost": s.get("jobs_lost"),
        "updates_add_up": bool(
            int(metrics["agg/k"].sum()) == len(updates) == s.get("updates_aggregated")
        ),
        "duplicate_updates": int(updates.duplicated(["iteration", "client_id"]).sum()),
        "final_accuracy": s.get("final_accuracy"),
        **_memory_report(by_kind, uss_by_kind, args.warmup),
        "kills": kills,
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(
        json.dumps(
            {k: v for k, v in report.items() if k not in ("kills", "pss_series_mb")}, indent=2
        )
    )


def _memory_report(
    by_kind: list[tuple[float, dict[str, int]]],
    uss_by_kind: list[tuple[float, dict[str, int]]],
    warmup: float,
) -> dict[str, object]:
    """Does memory grow after warm-up? The peak of the first window after warm-up against the
    peak of the last (each a quarter of the time after warm-up, at least a minute: single
    samples swing by tens of MB with evaluations and worker restarts), and the trend of a
    straight-line fit, for the whole session and by kind of process."""
    after = [(t, sum(parts.values())) for t, parts in by_kind if t > warmup]
    if len(after) < 3:
        return {}
    start, end = after[0][0], after[-1][0]
    width = max(60.0, (end - start) / 4)
    first = max(m for t, m in after if t <= start + width)
    last = max(m for t, m in after if t >= end - width)

    def trend(points: list[tuple[float, float]]) -> float:
        t, m = zip(*points, strict=True)
        return round(float(np.polyfit(t, m, 1)[0]) * 3600 / 1e9, 3)

    kinds = sorted({k for _, parts in by_kind for k in parts})

    def trends(series: list[tuple[float, dict[str, int]]]) -> dict[str, float]:
        after_kind = [(t, parts) for t, parts in series if t > warmup]
        return {k: trend([(t, parts.get(k, 0)) for t, parts in after_kind]) for k in kinds}

    return {
        "pss_peak_first_window_gb": round(first / 1e9, 3),
        "pss_peak_last_window_gb": round(last / 1e9, 3),
        "pss_growth_pct": round(100 * (last / first - 1), 1),
        "pss_trend_gb_per_hour": trend(after),
        "pss_trend_by_process_gb_per_hour": trends(by_kind),
        "uss_trend_by_process_gb_per_hour": trends(uss_by_kind),
        # every 30 s: seconds, then MB by kind of process
        "pss_series_mb": [
            [round(t), {k: round(v / 1e6) for k, v in parts.items()}]
            for i, (t, parts) in enumerate(by_kind)
            if i % 6 == 0
        ],
    }


if __name__ == "__main__":
    main()
