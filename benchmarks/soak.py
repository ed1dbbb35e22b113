"""Soak: the quick AKAFL-RJ preset for a long time with a client worker killed every 2 minutes.

Runs ``akafl-rj`` (iterations raised so it cannot finish first) for ``--minutes``, kills one of
the run's client worker processes (SIGKILL, chosen by a seeded generator) every ``--kill-every``
seconds, then asks the run to stop cleanly and reports:

- iterations done and worker failures seen by the server;
- updates lost: jobs started minus jobs aggregated, rejected, dropped by remodel and still live
  (the server's own bookkeeping; must be 0), and whether metrics and updates add up;
- memory of the whole Ray session, sampled every 5 s: after warm-up (the first ``--warmup``
  seconds), the peak of the session's PSS in the last window against the first (must not grow)
  and straight-line trends of the PSS, of each kind of process's heap (driver, server, workers,
  GCS, ...) and of the object-store pages; and the exact peak RSS of each process (the kernel's
  high-water mark, reset at the start of each quarter after warm-up), last quarter against first.

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


_FIELDS = {"Pss:": "pss", "Pss_Anon:": "anon", "Pss_Shmem:": "store"}


def _rollup(pid: int) -> dict[str, int]:
    """Bytes of a process: PSS, and the parts of it that are its own heap (anonymous pages) and
    object-store pages (shared memory, each page split between the processes that map it)."""
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, rest = line.partition(" ")
            if key in _FIELDS:
                out[_FIELDS[key]] = int(rest.split()[0]) * 1024
    return out


def _session() -> list[psutil.Process]:
    """This process and its descendants: the Ray session it started."""
    me = psutil.Process()
    return [me, *me.children(recursive=True)]


def session_memory() -> dict[str, dict[str, int]]:
    """Memory of the whole Ray session (this process and its descendants) by kind of process:
    {"pss" | "anon" | "store": {kind: bytes}}. PSS adds up to the session's memory; a process's
    anonymous pages are its heap, which is where a leak shows; the object-store pages move between
    processes as they map them (a worker restart hands its share to the others), so they are
    best read as a session total."""
    out: dict[str, dict[str, int]] = {"pss": {}, "anon": {}, "store": {}}
    for p in _session():
        try:
            parts = _rollup(p.pid)
        except OSError:
            continue
        g = _group(p)
        for field, value in parts.items():
            out[field][g] = out[field].get(g, 0) + value
    return out


def peak_rss_and_reset() -> dict[str, int]:
    """Peak RSS of every process of the session since its last reset (the kernel's high-water
    mark, VmHWM: exact, not sampled), summed by kind of process; then starts a new window
    (``clear_refs``). A process that died in the window is not counted; a restarted one counts
    from its start."""
    out: dict[str, int] = {}
    for p in _session():
        try:
            with open(f"/proc/{p.pid}/status") as f:
                hwm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
            with open(f"/proc/{p.pid}/clear_refs", "w") as f:
                f.write("5")
        except (OSError, StopIteration):
            continue
        g = _group(p)
        out[g] = out.get(g, 0) + hwm
    return out


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
    samples: list[tuple[float, dict[str, dict[str, int]]]] = []
    # Exact peaks: the windows are the four quarters of the time after warm-up.
    window = (args.minutes * 60 - args.warmup) / 4
    bounds = [t0 + args.warmup + i * window for i in range(4)]
    peaks: list[dict[str, int]] = []

    def tick(rows: list[dict]) -> bool:
        nonlocal next_kill, next_sample
        now = time.monotonic()
        if bounds and now >= bounds[0]:
            bounds.pop(0)
            last = peak_rss_and_reset()
            if len(bounds) < 3:  # the first reset only starts the first window
                peaks.append(last)
        if now >= next_sample:
            samples.append((now - t0, session_memory()))
            next_sample = now + 5.0
        if now >= next_kill:
            pids = worker_pids()
            if pids:
                victim = pids[int(rng.integers(len(pids)))]
                os.kill(victim, signal.SIGKILL)
                kills.append({"at_s": now - t0, "iteration": rows[-1]["iteration"], "pid": victim})
                print(f"soak: killed worker pid {victim} at iteration {rows[-1]['iteration']}")
            next_kill = now + args.kill_every
        if now - t0 >= args.minutes * 60:
            if len(peaks) < 4:  # the run drains its calls after this: one last window only
                peaks.append(peak_rss_and_reset())
            return True
        return False

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
        **_memory_report(samples, args.warmup),
        **_peak_report(peaks),
        "kills": kills,
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(
        json.dumps({k: v for k, v in report.items() if k not in ("kills", "series_mb")}, indent=2)
    )


def _memory_report(
    samples: list[tuple[float, dict[str, dict[str, int]]]], warmup: float
) -> dict[str, object]:
    """Does memory grow after warm-up? The peak of the session's PSS in the first window after
    warm-up against the peak in the last (each a quarter of the time after warm-up, at least a
    minute: single samples swing by tens of MB with evaluations and worker restarts), and the
    trends of straight-line fits: PSS of the session, heap (anonymous pages) by kind of process,
    and object-store pages of the session."""
    after = [(t, s) for t, s in samples if t > warmup]
    if len(after) < 3:
        return {}
    start, end = after[0][0], after[-1][0]
    width = max(60.0, (end - start) / 4)
    total = [(t, sum(s["pss"].values())) for t, s in after]
    first = max(m for t, m in total if t <= start + width)
    last = max(m for t, m in total if t >= end - width)

    def trend(points: list[tuple[float, float]]) -> float:
        t, m = zip(*points, strict=True)
        return round(float(np.polyfit(t, m, 1)[0]) * 3600 / 1e9, 3)

    kinds = sorted({k for _, s in samples for k in s["pss"]})
    return {
        "pss_peak_first_window_gb": round(first / 1e9, 3),
        "pss_peak_last_window_gb": round(last / 1e9, 3),
        "pss_growth_pct": round(100 * (last / first - 1), 1),
        "pss_trend_gb_per_hour": trend(total),
        "heap_trend_by_process_gb_per_hour": {
            k: trend([(t, s["anon"].get(k, 0)) for t, s in after]) for k in kinds
        },
        "store_pages_trend_gb_per_hour": trend([(t, sum(s["store"].values())) for t, s in after]),
        # every 30 s: seconds, PSS by kind of process, heap by kind, object-store pages (MB)
        "series_mb": [
            [
                round(t),
                {k: round(v / 1e6) for k, v in s["pss"].items()},
                {k: round(v / 1e6) for k, v in s["anon"].items()},
                round(sum(s["store"].values()) / 1e6),
            ]
            for i, (t, s) in enumerate(samples)
            if i % 6 == 0
        ],
    }


def _peak_report(peaks: list[dict[str, int]]) -> dict[str, object]:
    """Peak RSS (exact) by window after warm-up: the last quarter against the first, in total
    and by kind of process. RSS counts shared object-store pages in every process that maps
    them, so compare windows with each other, not with the PSS above."""
    if len(peaks) < 2:
        return {}
    first, last = peaks[0], peaks[-1]
    total = [sum(p.values()) for p in peaks]
    return {
        "peak_rss_by_window_mb": [{k: round(v / 1e6) for k, v in p.items()} for p in peaks],
        "peak_rss_total_by_window_gb": [round(t / 1e9, 3) for t in total],
        "peak_rss_growth_pct": round(100 * (total[-1] / total[0] - 1), 1),
        "peak_rss_growth_by_process_mb": {
            k: round((last.get(k, 0) - first.get(k, 0)) / 1e6) for k in sorted(first | last)
        },
    }


if __name__ == "__main__":
    main()
