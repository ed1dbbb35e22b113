"""Scale: many virtual clients on one machine, memory and server time per iteration.

Profile: shards partition (2 shards of 15 samples per client, wrapping over MNIST), K = 100,
200 iterations, a small MLP (784-32-10), virtual clock. For each N it reports

- the peak memory of the whole Ray session (driver, GCS, raylet, object store, server and
  worker processes), sampled every 0.5 s: the sum of PSS (shared pages split between the
  processes that map them: the honest total) and the sum of RSS (counts shared pages once per
  process: an upper bound); and the peak PSS of each kind of process (driver, server actor,
  client workers, the rest of Ray), each at its own moment;
- the server's own time per iteration (``sys/server_s``: the iteration minus the time spent
  waiting for updates), median over the iterations after the first 20, and its CPU time
  (``sys/server_cpu_s``: CPU seconds of the server's process, all threads): on a machine whose
  cores the server shares with the workers, the wall time includes waiting for a core;
- the time outside the iterations: the run end to end minus the iterations' own time (loading
  and partitioning the data, starting Ray's actors, dispatching every client, the final
  checkpoint, the model and the results files), and the checkpoint's size;
- the versions held in the object store at the end.

    python benchmarks/scale.py [--clients 1000 10000 100000] [--iterations 200]
    python benchmarks/scale.py --clock real --concurrency 1000 --clients 1000 1000000 1000 1000000

``--clock real`` runs the real clock (``ray.wait`` on the jobs in flight) with no injected delay
(``clock.time_scale=0``: every job is as fast as the cluster computes it), ``--concurrency C``
bounds the clients in training at once (``clock.concurrency``; required at large N on the real
clock, which keeps one actor call per client in training). Repeat an N to interleave runs on a
noisy machine.

Targets (issue 17): at N = 10,000,000 peak session memory under 4 GB, server time per iteration
flat in N, start-up plus checkpoints under 60 s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import threading
import time
from pathlib import Path

import psutil

import rayfl
from rayfl.config import load_config

KINDS = {"ray::KAsyncServer": "server", "ray::ClientWorker": "workers"}


def kind_of(p: psutil.Process, me: psutil.Process) -> str:
    """driver (this process), server, workers, or ray (GCS, raylet, idle workers, agents)."""
    if p.pid == me.pid:
        return "driver"
    try:
        name = " ".join(p.cmdline()[:1])
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "ray"
    return next((k for prefix, k in KINDS.items() if name.startswith(prefix)), "ray")


class PeakMemory:
    """Samples the memory of this process and all its descendants (the Ray session)."""

    def __init__(self, interval_s: float = 0.5):
        self.interval_s = interval_s
        self.peak_pss = 0
        self.peak_rss = 0
        self.peak_by_kind: dict[str, int] = {}  # PSS, each kind at its own peak
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def sample(self) -> tuple[int, int, dict[str, int]]:
        me = psutil.Process()
        pss = rss = 0
        by_kind: dict[str, int] = {}
        for p in [me, *me.children(recursive=True)]:
            try:
                info = p.memory_full_info()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            p_pss = getattr(info, "pss", info.rss)
            pss += p_pss
            rss += info.rss
            kind = kind_of(p, me)
            by_kind[kind] = by_kind.get(kind, 0) + p_pss
        return pss, rss, by_kind

    def _loop(self) -> None:
        while not self._stop.is_set():
            pss, rss, by_kind = self.sample()
            self.peak_pss = max(self.peak_pss, pss)
            self.peak_rss = max(self.peak_rss, rss)
            for kind, value in by_kind.items():
                self.peak_by_kind[kind] = max(self.peak_by_kind.get(kind, 0), value)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def profile(
    n: int, iterations: int, clock: str = "virtual", concurrency: int | None = None
) -> list[str]:
    extra = [f"clock.kind={clock}"] + (["clock.time_scale=0.0"] if clock == "real" else [])
    extra += [f"clock.concurrency={concurrency}"] if concurrency is not None else []
    return [
        *extra,
        "name=scale",
        f"data.num_clients={n}",
        "data.partition=shards",
        "data.shards_per_client=2",
        "data.shard_size=15",
        "model.name=mlp",
        "model.hidden=[32]",
        "aggregation.k=100",
        f"iterations={iterations}",
        f"eval.every={iterations}",
        "eval.max_samples=1000",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--clock", choices=("virtual", "real"), default="virtual")
    parser.add_argument("--concurrency", type=int, help="clock.concurrency (default: none)")
    parser.add_argument("--json", help="also write the numbers to this file")
    args = parser.parse_args()
    import ray

    rows = []
    for n in args.clients:
        # A fresh Ray session per N, so each peak is that N's alone.
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR")
        cfg = load_config("wkafl", profile(n, args.iterations, args.clock, args.concurrency))
        with PeakMemory() as mem, tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            result = rayfl.run(cfg, output=Path(tmp) / "run", progress=False)
            wall = time.perf_counter() - t
            df = result.metrics.to_pandas()
            checkpoint = Path(result.run_dir) / "checkpoint.npz"
            checkpoint_mb = checkpoint.stat().st_size / 1e6 if checkpoint.is_file() else 0.0
        ray.shutdown()
        steady = df.iloc[20:] if len(df) > 40 else df
        row = {
            "clients": n,
            "peak_session_pss_gb": mem.peak_pss / 2**30,
            "peak_session_rss_gb": mem.peak_rss / 2**30,
            "server_s_per_iteration_median": float(steady["sys/server_s"].median()),
            "server_cpu_s_per_iteration_median": float(steady["sys/server_cpu_s"].median()),
            "iteration_s_median": float(steady["sys/iteration_s"].median()),
            "versions_held_end": int(df["agg/versions_held"].iloc[-1]),
            "end_to_end_s": wall,
            "outside_iterations_s": wall - float(df["sys/iteration_s"].sum()),
            "checkpoint_mb": checkpoint_mb,
            "peak_pss_gb_by_kind": {k: v / 2**30 for k, v in sorted(mem.peak_by_kind.items())},
            "final_accuracy": result.final_accuracy,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB, ray {ray.__version__}",
        "iterations": args.iterations,
        "clock": args.clock,
        "concurrency": args.concurrency,
        "rows": rows,
    }
    print()
    print(
        f"{'N':>8} {'peak PSS GB':>12} {'peak RSS GB':>12} {'server ms/it':>13} {'CPU ms/it':>10} "
        f"{'outside its s':>14} {'end to end s':>13} {'versions':>9}"
    )
    for r in rows:
        print(
            f"{r['clients']:>8} {r['peak_session_pss_gb']:>12.2f} {r['peak_session_rss_gb']:>12.2f} "
            f"{1000 * r['server_s_per_iteration_median']:>13.2f} "
            f"{1000 * r['server_cpu_s_per_iteration_median']:>10.2f} "
            f"{r['outside_iterations_s']:>14.1f} {r['end_to_end_s']:>13.1f} {r['versions_held_end']:>9}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
