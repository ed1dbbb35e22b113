"""GPU client throughput: client updates/s of the paper CNN, one-job vs batched compute.

Each configuration is a whole ``rayfl.run`` on the virtual clock (clients, aggregation,
versions; the ``kasync`` preset's plain mean unless ``--preset``), N = 1000 clients of the
bundled MNIST, in a fresh Ray session. The grid: B (``client.batch_size``), K
(``aggregation.k``), workers per GPU (``client.num_gpus`` = 1 / workers) and the compute path
(``client.batched`` off: one job at a time; on: a worker's call of jobs in one torch.func vmap).
A rate is updates aggregated over the loop's wall time after the first fifth of the iterations
(warm-up: CUDA contexts, cuDNN's kernel choice); ``rate_all`` counts from the server's start.

    python benchmarks/gpu.py --check               # CUDA vs CPU, batched vs one job (no Ray)
    python benchmarks/gpu.py [--json out.json]     # the grid: B 4 16, K 10 100, 1 2 4 8 per GPU
    python benchmarks/gpu.py --quick               # CPU-sized: B 4 16, K 10, 1 and 2 workers

Without CUDA the grid runs on CPU workers (``--workers`` counts workers, ``client.num_cpus`` =
1 each). Target (issue 17) on one H100 / H200: at least 20,000 client updates/s at B = 4.
``benchmarks/gpu-check.sh`` installs what is missing and runs both.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_correctness import correctness  # noqa: E402

import rayfl  # noqa: E402
from rayfl.config import load_config  # noqa: E402


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import ray

    from rayfl.environment import cpu

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {
        "cpu": f"{cpu()[0] or platform.machine()}, {os.cpu_count()} cores",
        "gpus": gpus,
        "cuda": torch.version.cuda if gpus else None,
        "torch": torch.__version__,
        "ray": ray.__version__,
        "python": platform.python_version(),
        "load_avg": os.getloadavg(),
    }


def overrides(b: int, k: int, workers: int, mode: str, args: argparse.Namespace) -> list[str]:
    """One configuration of the grid as ``--set`` strings."""
    iterations = max(5, args.updates // k)
    gpu = torch.cuda.is_available() and not args.cpu
    return [
        "name=gpu-bench",
        f"data.num_clients={args.clients}",
        "model.name=paper_cnn",
        f"client.batch_size={b}",
        f"aggregation.k={k}",
        f"iterations={iterations}",
        f"eval.every={iterations}",
        "eval.max_samples=1000",
        "checkpoint_every=0",
        f"client.num_workers={workers * (torch.cuda.device_count() if gpu else 1)}",
        f"client.num_gpus={1 / workers if gpu else 0}",
        f"client.num_cpus={args.cpus_per_worker}",
        f"client.batched={mode}",
    ]


def measure(b: int, k: int, workers: int, mode: str, args: argparse.Namespace) -> dict[str, Any]:
    """One configuration, end to end in a fresh Ray session: its rates and the run's facts."""
    import ray

    gpus = torch.cuda.device_count() if not args.cpu else 0
    ray.init(num_cpus=os.cpu_count(), num_gpus=gpus, include_dashboard=False, logging_level="ERROR")
    try:
        cfg = load_config(args.preset, overrides(b, k, workers, mode, args))
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            result = rayfl.run(cfg, output=Path(tmp) / "run", progress=False)
            end_to_end = time.perf_counter() - t
            summary = json.loads((result.run_dir / "summary.json").read_text())
            df = result.metrics.to_pandas()  # read while the run folder exists
    finally:
        ray.shutdown()
    wall, ks = df["sys/wall_s"].to_numpy(), df["agg/k"].to_numpy()
    start = len(df) // 5  # warm-up rows left out of the steady rate
    paths = sorted({g.get("client_compute", "?") for g in summary["environment"]["workers"]})
    return {
        "batch_size": b,
        "k": k,
        "workers_per_gpu" if gpus else "workers": workers,
        "batched": mode,
        "compute": paths,
        "iterations": len(df),
        "updates": int(ks.sum()),
        "rate": float(ks[start + 1 :].sum() / (wall[-1] - wall[start])),
        "rate_all": float(ks.sum() / wall[-1]),
        "server_ms_per_iteration": 1000 * float(np.median(df["sys/server_s"].to_numpy()[start:])),
        "end_to_end_s": end_to_end,
        "final_accuracy": result.final_accuracy,
        "load_avg_1min": os.getloadavg()[0],  # other processes on the machine meanwhile
    }


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only the correctness check")
    parser.add_argument("--quick", action="store_true", help="a small CPU-sized grid")
    parser.add_argument("--cpu", action="store_true", help="CPU workers even if CUDA works")
    parser.add_argument("--batch-sizes", type=int, nargs="+")
    parser.add_argument("--ks", type=int, nargs="+")
    parser.add_argument("--workers", type=int, nargs="+", help="per GPU (CPU: in all)")
    parser.add_argument("--modes", nargs="+", default=["off", "on"])
    parser.add_argument("--updates", type=int, help="updates per configuration (about)")
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--cpus-per-worker", type=float, default=1.0)
    parser.add_argument("--preset", default="kasync")
    parser.add_argument("--json", help="also write the numbers to this file")
    args = parser.parse_args()
    quick = args.quick
    args.batch_sizes = args.batch_sizes or [4, 16]
    args.ks = args.ks or ([10] if quick else [10, 100])
    args.workers = args.workers or ([1, 2] if quick else [1, 2, 4, 8])
    args.updates = args.updates or (300 if quick else 20_000)
    return args


def table(rows: list[dict[str, Any]]) -> str:
    """The grid as text: one line per (B, K, workers), one-job and batched rates side by side."""
    lines = [f"{'B':>3} {'K':>4} {'workers':>7} {'mode':>4} {'updates/s':>10} {'server ms/it':>12}"]
    for r in rows:
        w = r.get("workers_per_gpu", r.get("workers"))
        lines.append(
            f"{r['batch_size']:>3} {r['k']:>4} {w:>7} {r['batched']:>4} {r['rate']:>10.1f} "
            f"{r['server_ms_per_iteration']:>12.2f}"
        )
    return "\n".join(lines)


def main() -> None:
    args = parse()
    out: dict[str, Any] = {"machine": machine(), "argv": sys.argv[1:]}
    if args.check:
        out["check"] = correctness()
        print(json.dumps(out["check"], indent=2))
    else:
        rows = []
        for b in args.batch_sizes:
            for k in args.ks:
                for w in args.workers:
                    for mode in args.modes:  # side by side: one-job and batched interleaved
                        rows.append(measure(b, k, w, mode, args))
                        print(json.dumps(rows[-1]), flush=True)
        out["rows"] = rows
        print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    if args.check and not out["check"]["ok"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
