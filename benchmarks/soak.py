"""Soak: the quick AKAFL-RJ preset for a long time with a client worker killed every 2 minutes.

Runs ``akafl-rj`` (iterations raised so it cannot finish first) for ``--minutes``, kills one of
the run's client worker processes (SIGKILL, chosen by a seeded generator) every ``--kill-every``
seconds, then asks the run to stop cleanly and reports:

- iterations done and worker failures seen by the server;
- updates lost: jobs started minus jobs aggregated, rejected, dropped by remodel and still live
  (the server's own bookkeeping; must be 0), and whether metrics and updates add up;
- memory (PSS of the whole Ray session, sampled every 5 s): the value after warm-up (the first
  ``--warmup`` seconds) and the peak after it (must not grow).

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


def session_pss() -> dict[str, int]:
    """PSS of the whole Ray session (this process and its descendants), by kind of process."""
    me = psutil.Process()
    out: dict[str, int] = {}
    for p in [me, *me.children(recursive=True)]:
        try:
            info = p.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        g = _group(p)
        out[g] = out.get(g, 0) + getattr(info, "pss", info.rss)
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
    memory: list[tuple[float, int]] = []
    by_kind: list[tuple[float, dict[str, int]]] = []

    def tick(rows: list[dict]) -> bool:
        nonlocal next_kill, next_sample
        now = time.monotonic()
        if now >= next_sample:
            parts = session_pss()
            memory.append((now - t0, sum(parts.values())))
            by_kind.append((now - t0, parts))
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
    warm = [m for t, m in memory if t <= args.warmup]
    after = [m for t, m in memory if t > args.warmup]
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
        "pss_after_warmup_gb": round(warm[-1] / 1e9, 3) if warm else None,
        "pss_peak_after_warmup_gb": round(max(after) / 1e9, 3) if after else None,
        "pss_growth_pct": round(100 * (max(after) / warm[-1] - 1), 1) if warm and after else None,
        "pss_trend_gb_per_hour": (
            round(
                float(np.polyfit([t for t, _ in memory if t > args.warmup], after, 1)[0])
                * 3600
                / 1e9,
                3,
            )
            if len(after) > 2
            else None
        ),
        # where memory grew: PSS at the end minus PSS at the end of warm-up, by kind of process
        "pss_growth_by_process_gb": _growth(by_kind, args.warmup),
        "kills": kills,
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "kills"}, indent=2))


def _growth(by_kind: list[tuple[float, dict[str, int]]], warmup: float) -> dict[str, float]:
    warm = [m for t, m in by_kind if t <= warmup]
    if not warm or not by_kind:
        return {}
    first, last = warm[-1], by_kind[-1][1]
    return {k: round((last.get(k, 0) - first.get(k, 0)) / 1e9, 3) for k in sorted({*first, *last})}


if __name__ == "__main__":
    main()
