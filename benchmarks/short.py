"""A short experiment end to end: ``rayfl.run`` against a plain PyTorch loop, each a fresh process.

Experiment: synchronous FedAvg (McMahan et al. 2017) on the bundled MNIST, 100 clients of 2
shards of 300 images, 10 random clients a round, 1 local epoch of SGD (lr 0.05, batch 32), the
paper CNN, 10 rounds, one evaluation on 2,000 test images after the last round. rayfl runs it
as ``mode: sync`` (preset ``random`` with :func:`overrides`); the baseline is
``plain_fedavg.py``, which draws the same clients and mini-batches in one process.

Each run is a fresh subprocess, so imports, Ray's start and stop and the process exit count:
the time is the wall time from spawn to exit. Inside, each child stamps its phases (the rayfl
child by wrapping the steps of ``rayfl.runtime.driver.RunDriver``; no change to rayfl). Runs
are interleaved (rayfl, plain, plain, rayfl, ...), each waits for a quiet machine, and the
medians are reported, also over the clean runs only: each run records the CPU that processes
not its own used meanwhile and the hypervisor's steal (torch's 2-thread plain loop slows down
several-fold when others compete for the 2 cores; rayfl's 1-thread workers much less).

    python benchmarks/short.py [--repeats 5] [--rounds 10] [--quick] [--json PATH]
    python benchmarks/short.py --join-ray     # rayfl joins a Ray started once for all its runs

``--join-ray`` measures what a run costs where Ray is already up (a Tune trial, `rayfl
reproduce`, a notebook that called `ray.init`, `--address`): the harness starts one Ray (its
processes count as the runs') and every rayfl child passes its address; the child's workers
still start, as each run is its own Ray job.

Target: rayfl / plain <= 1.15 (ratio of the median wall times). Run it from any folder: the
children run in a temporary folder, so Ray's workers import rayfl from where this process
does (put a snapshot first on PYTHONPATH to measure it while others edit the tree).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.metadata
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PLAIN = HERE / "plain_fedavg.py"
TARGET = 1.15
MARK = "RAYFL_SHORT_BENCHMARK"  # in the environment of every process a run starts

# Phases of both children, in time order; a phase one of them lacks is 0 for it.
PHASES = (
    "python start",  # spawn -> first line of the child's main
    "imports",  # rayfl + ray + torch (rayfl), torch + rayfl.data/models (plain)
    "config + model",
    "data load + partition",
    "run folder",
    "ray.init",
    "ray.put data",
    "workers start + server init",  # the pool attaches while the server builds and evaluates w0
    "rounds",
    "final eval",
    "write files",
    "ray.shutdown",
    "process exit",  # the child's last stamp -> exit
)


def overrides(rounds: int) -> list[str]:
    """The experiment as overrides of the ``random`` preset (its MLP and partition replaced)."""
    return [
        "name=short",
        "mode=sync",
        "seed=0",
        f"iterations={rounds}",
        # No checkpoint.pkl (the default, 100, writes one after the last round): the plain
        # loop writes none either. Both save the final model.
        "checkpoint_every=0",
        "data.dataset=mnist",
        "data.partition=shards",
        "data.num_clients=100",
        "data.shards_per_client=2",
        "data.shard_size=300",
        "model.name=paper_cnn",
        "client.batch_size=32",
        "client.local_lr=0.05",
        "client.num_cpus=1",  # one worker per core
        "selection.kind=random",
        "selection.k_fraction=0.1",
        "selection.epochs=1",
        f"eval.every={rounds}",  # once, after the last round
        "eval.max_samples=2000",
    ]


# --- the rayfl child -------------------------------------------------------------------------


def timed(owner: Any, name: str, spans: dict[str, list[tuple[float, float]]], label: str) -> None:
    """Replaces ``owner.name`` by a wrapper that appends each call's (start, end) to
    ``spans[label]``; does nothing if the runtime no longer has it (that phase then reads 0 and
    the next one absorbs its time)."""
    fn = getattr(owner, name, None)
    if fn is None:
        return

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.time()
        try:
            return fn(*args, **kwargs)
        finally:
            spans.setdefault(label, []).append((start, time.time()))

    setattr(owner, name, wrapper)


def child_rayfl(rounds: int, out: str, json_path: str, address: str | None = None) -> None:
    """One ``rayfl.run`` with its phases stamped; writes them to ``json_path``."""
    marks = {"start": time.time()}
    # What `rayfl run` imports before it starts (rayfl.api, which loads torch first; the rounds
    # engine's module), imported here to time it and to wrap it. The server's module is wrapped
    # only once the engine starts, when a plain `rayfl run` imports it.

    import rayfl
    from rayfl import api
    from rayfl.rounds.engine import RoundsEngine
    from rayfl.runtime import driver

    marks["imports"] = time.time()
    spans: dict[str, list[tuple[float, float]]] = {}
    timed(api, "run_data", spans, "data")
    timed(driver, "ensure_ray", spans, "ray.init")
    timed(driver, "put_run_data", spans, "ray.put")
    start = RoundsEngine.start

    def start_and_wrap_the_server(self: Any, *args: Any, **kwargs: Any) -> Any:
        from rayfl.rounds.loop import RoundServer

        if not hasattr(RoundServer.round, "__wrapped__"):
            timed(RoundServer, "_evaluate", spans, "eval")
            timed(RoundServer, "round", spans, "round")
        return start(self, *args, **kwargs)

    RoundsEngine.start = start_and_wrap_the_server
    timed(RoundsEngine, "start", spans, "engine start")
    timed(driver, "shutdown_ray", spans, "ray.shutdown")
    result = rayfl.run(
        "random", overrides=overrides(rounds), output=out, progress=False, address=address
    )
    marks["end"] = time.time()
    report = {
        "marks": marks,
        "spans": spans,
        "final_accuracy": result.final_accuracy,
        "num_workers": result.summary.get("num_workers"),
        "files": sorted(p.name for p in Path(out).iterdir()),
    }
    Path(json_path).write_text(json.dumps(report))


# --- the parent ------------------------------------------------------------------------------


def spawn(
    kind: str, rounds: int, workdir: Path, threads: int | None, address: str | None = None
) -> dict[str, Any]:
    """Runs one child in a fresh folder; its wall time (spawn to exit), phases and results."""
    run = workdir / f"{kind}-{time.time_ns()}"
    run.mkdir()
    stamps = run / "stamps.json"
    if kind == "rayfl":
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(run / "run")]
        cmd += ["--address", address] if address else []
    else:
        cmd = [sys.executable, str(PLAIN), "--out", str(run)]
        cmd += ["--threads", str(threads)] if threads else []
    cmd += ["--rounds", str(rounds), "--json", str(stamps)]
    with open(run / "stderr.txt", "wb") as err:
        env = {**os.environ, MARK: "1"}  # Ray's processes inherit it: they count as the run's
        with OthersCpu() as others:
            t0, steal0 = time.time(), cpu_seconds(steal=True)
            proc = subprocess.run(cmd, cwd=run, env=env, stdout=subprocess.DEVNULL, stderr=err)
            t1, steal = time.time(), cpu_seconds(steal=True) - steal0
    if proc.returncode != 0:
        tail = (run / "stderr.txt").read_text()[-3000:]
        raise SystemExit(f"{kind} child failed (exit {proc.returncode}):\n{tail}")
    child = json.loads(stamps.read_text())
    return {
        "kind": kind,
        "wall_s": t1 - t0,
        "phases_s": phases(kind, child, t0, t1),
        "rounds_s": [b - a for a, b in child["spans"].get("round", [])],
        "final_accuracy": child["final_accuracy"],
        "num_workers": child.get("num_workers"),
        "threads": child.get("threads"),
        "files": child.get("files"),
        # CPU the rest of the machine used meanwhile, as a share of all cores: noise
        "others_cpu_share": others.cpu_s / ((t1 - t0) * (os.cpu_count() or 1)),
        "steal_share": steal / ((t1 - t0) * (os.cpu_count() or 1)),  # the hypervisor's
    }


def phases(kind: str, child: dict[str, Any], t0: float, t1: float) -> dict[str, float]:
    """Seconds per phase (:data:`PHASES`); they sum to the wall time ``t1 - t0``."""
    m, s = child["marks"], child["spans"]

    def at(label: str, call: int, end: int) -> float | None:
        return s[label][call][end] if label in s else None

    rounds_end = at("round", -1, 1)
    final_eval = at("eval", -1, 1) - at("eval", -1, 0) if "eval" in s else 0.0
    if kind == "plain":
        ends = [
            ("python start", m["start"]),
            ("imports", m["imports"]),
            ("data load + partition", m["data"]),
            ("config + model", m["model"]),
            ("rounds", rounds_end),
            ("final eval", m["eval"]),
            ("write files", m["saved"]),
            ("process exit", t1),
        ]
        return _between(t0, ends)
    ends = [
        ("python start", m["start"]),
        ("imports", m["imports"]),
        ("config + model", at("data", 0, 0)),  # load_config; the model is built in server init
        ("data load + partition", at("data", 0, 1)),
        ("run folder", at("ray.init", 0, 0)),
        ("ray.init", at("ray.init", 0, 1)),
        ("ray.put data", at("ray.put", 0, 1)),
        ("workers start + server init", at("engine start", 0, 1)),
        ("rounds", None if rounds_end is None else rounds_end - final_eval),
        ("final eval", rounds_end),  # inside the last round
        ("write files", at("ray.shutdown", 0, 0)),  # model.pt, parquet, summary; kill workers
        ("ray.shutdown", at("ray.shutdown", 0, 1)),
        ("process exit", t1),
    ]
    return _between(t0, ends)


def _between(t0: float, ends: list[tuple[str, float | None]]) -> dict[str, float]:
    """Seconds from each phase's end to the next's; a missing end (None: the runtime changed
    and a wrapper found nothing) takes the previous one, so its phase reads 0 and the next
    absorbs its time."""
    out = dict.fromkeys(PHASES, 0.0)
    prev = t0
    for name, end in ends:
        end = prev if end is None else end
        out[name] += end - prev
        prev = end
    return out


def cpu_seconds(steal: bool = False) -> float:
    """CPU seconds all cores have been busy since boot, or with ``steal`` the seconds the
    hypervisor gave this machine's CPUs to others (/proc/stat; 0 where there is none)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except OSError:
        return 0.0
    busy = fields[7] if steal else sum(fields) - fields[3] - fields[4]  # - idle - iowait
    return busy / os.sysconf("SC_CLK_TCK")


class OthersCpu:
    """CPU seconds used, while the ``with`` block runs, by the processes that are not the
    benchmark's (those without :data:`MARK` in their environment), sampled every 0.5 s."""

    def __init__(self, interval_s: float = 0.5):
        self.interval_s = interval_s
        self.cpu_s = 0.0
        self._ours: dict[int, bool] = {}
        self._start: dict[int, float] = {}  # pid -> its CPU seconds when first seen
        self._last: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> OthersCpu:
        self._sample(first=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        self.cpu_s = sum(self._last[p] - self._start[p] for p in self._last)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def _sample(self, first: bool = False) -> None:
        import psutil  # here, not at the top: the rayfl child runs this file and stays light

        for proc in psutil.process_iter():
            try:
                if proc.pid not in self._ours:
                    self._ours[proc.pid] = MARK in proc.environ() or proc.pid == os.getpid()
                if self._ours[proc.pid]:
                    continue
                times = proc.cpu_times()
            except psutil.Error:
                continue
            cpu = times.user + times.system
            # A process born during the run counts from 0.
            self._start.setdefault(proc.pid, cpu if first else 0.0)
            self._last[proc.pid] = cpu


def wait_quiet(threshold: float, max_wait_s: float) -> float:
    """Waits (up to ``max_wait_s``) until the machine's busy share over 1 s is under
    ``threshold`` (others' tests share it); returns the last share measured."""
    deadline = time.monotonic() + max_wait_s
    while True:
        before = cpu_seconds()
        time.sleep(1.0)
        share = (cpu_seconds() - before) / (os.cpu_count() or 1)
        if share < threshold or time.monotonic() > deadline:
            return share
        time.sleep(4.0)


def machine() -> dict[str, Any]:
    """CPU model, cores and the versions that matter (read without importing torch or ray)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": importlib.metadata.version("torch"),
        "ray": importlib.metadata.version("ray"),
        "platform": platform.platform(),
    }


def source() -> dict[str, Any]:
    """Where the children import rayfl from (a snapshot on PYTHONPATH, or this checkout) and
    this checkout's commit, with whether its rayfl/ differs from it."""

    def git(*args: str) -> str | None:
        proc = subprocess.run(["git", "-C", str(HERE.parent), *args], capture_output=True)
        return proc.stdout.decode().strip() if proc.returncode == 0 else None

    spec = importlib.util.find_spec("rayfl")
    status = git("status", "--porcelain", "rayfl")
    return {
        "rayfl": str(Path(spec.origin).parent) if spec and spec.origin else None,
        "checkout_commit": git("rev-parse", "--short", "HEAD"),
        "checkout_rayfl_modified": None if status is None else bool(status),
    }


def medians(runs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """Median wall time, per phase and per round of one kind's runs."""
    mine = [r for r in runs if r["kind"] == kind]
    return {
        "wall_s": statistics.median(r["wall_s"] for r in mine),
        "phases_s": {p: statistics.median(r["phases_s"][p] for r in mine) for p in PHASES},
        "rounds_total_s": statistics.median(sum(r["rounds_s"]) for r in mine),
        "final_accuracy": statistics.median(r["final_accuracy"] for r in mine),
    }


def table(med: dict[str, dict[str, Any]]) -> str:
    """Median seconds per phase, rayfl against plain, and rayfl's extra."""
    rows = [f"{'phase (median s)':<26}{'rayfl':>8}{'plain':>8}{'extra':>8}"]
    for p in PHASES:
        a, b = med["rayfl"]["phases_s"][p], med["plain"]["phases_s"][p]
        rows.append(f"{p:<26}{a:>8.2f}{b:>8.2f}{a - b:>+8.2f}")
    a, b = med["rayfl"]["wall_s"], med["plain"]["wall_s"]
    rows.append(f"{'wall, spawn to exit':<26}{a:>8.2f}{b:>8.2f}{a - b:>+8.2f}")
    return "\n".join(rows)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 rounds, 1 repeat")
    parser.add_argument("--plain-threads", type=int, help="torch threads of the plain loop")
    parser.add_argument("--json", help="default: results-short.json beside this file")
    parser.add_argument(
        "--quiet",
        type=float,
        default=0.3,
        help="start a run once the busy share of all cores is under this",
    )
    parser.add_argument("--max-wait", type=float, default=300.0, help="seconds, per run")
    parser.add_argument(
        "--noisy",
        type=float,
        default=0.1,
        help="a run whose others' CPU + steal share reaches this is left out of the clean medians",
    )
    parser.add_argument(
        "--join-ray",
        action="store_true",
        help="start one Ray for all runs; each rayfl run joins it (--address)",
    )
    parser.add_argument("--child", metavar="RUN_DIR", help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    return parser.parse_args()


def run_interleaved(args: argparse.Namespace) -> list[dict[str, Any]]:
    """``args.repeats`` runs of each kind, interleaved; the order flips each repeat (rayfl,
    plain, plain, rayfl, ...) and each run waits for a quiet machine."""
    runs = []
    with tempfile.TemporaryDirectory(prefix="rayfl-short-") as tmp, shared_ray(args) as address:
        for rep in range(args.repeats):
            for kind in ("rayfl", "plain") if rep % 2 == 0 else ("plain", "rayfl"):
                busy = wait_quiet(args.quiet, args.max_wait)
                run = spawn(kind, args.rounds, Path(tmp), args.plain_threads, address)
                runs.append({"repeat": rep, "busy_before": busy, **run})
                print(
                    f"repeat {rep} {kind:<5}: {run['wall_s']:6.2f} s (machine busy before "
                    f"{busy:.0%}, others during {run['others_cpu_share']:.0%}, steal "
                    f"{run['steal_share']:.0%})",
                    flush=True,
                )
    return runs


@contextlib.contextmanager
def shared_ray(args: argparse.Namespace) -> Iterator[str | None]:
    """With ``--join-ray``: a Ray on this machine for all the runs (as a Tune search or
    ``rayfl reproduce`` has), its address; else None. Its processes inherit :data:`MARK`, so
    their CPU counts as the runs', not as others'."""
    if not args.join_ray:
        yield None
        return
    import ray

    os.environ[MARK] = "1"
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def summarize(runs: list[dict[str, Any]], noisy: float) -> dict[str, Any]:
    """Medians and ratios of all runs, and of the clean ones (others' CPU + steal < noisy):
    torch's 2-thread plain loop slows down far more than rayfl's 1-thread workers when others
    compete for the cores, so a noisy run flatters rayfl."""
    med = {kind: medians(runs, kind) for kind in ("rayfl", "plain")}
    out: dict[str, Any] = {
        "medians": med,
        "ratio_of_medians": med["rayfl"]["wall_s"] / med["plain"]["wall_s"],
        "paired_ratios": [a["wall_s"] / b["wall_s"] for a, b in _pairs(runs)],
    }
    clean = [r for r in runs if r["others_cpu_share"] + r["steal_share"] < noisy]
    if {r["kind"] for r in clean} == {"rayfl", "plain"}:
        med_clean = {kind: medians(clean, kind) for kind in ("rayfl", "plain")}
        out["clean"] = {
            "runs": {kind: sum(r["kind"] == kind for r in clean) for kind in ("rayfl", "plain")},
            "medians": med_clean,
            "ratio_of_medians": med_clean["rayfl"]["wall_s"] / med_clean["plain"]["wall_s"],
        }
    return out


def main() -> None:
    args = parse_args()
    if args.child:
        child_rayfl(args.rounds, args.child, args.json, args.address)
        return
    if args.quick:
        args.rounds, args.repeats = 2, 1
    runs = run_interleaved(args)
    result = summarize(runs, args.noisy)
    print(table(result["medians"]))
    print(
        f"rayfl / plain = {result['ratio_of_medians']:.3f} (ratio of medians; median of paired "
        f"ratios {statistics.median(result['paired_ratios']):.3f}); target <= {TARGET}"
    )
    if "clean" in result:
        n = result["clean"]["runs"]
        print(
            f"clean runs only ({n['rayfl']} rayfl, {n['plain']} plain): rayfl / plain = "
            f"{result['clean']['ratio_of_medians']:.3f}"
        )
    experiment = {
        "rounds": args.rounds,
        "repeats": args.repeats,
        "overrides": overrides(args.rounds),
        "join_ray": args.join_ray,
    }
    out = {"machine": machine(), "source": source(), "experiment": experiment, "runs": runs}
    out.update(result, target=TARGET)
    path = args.json or (None if args.quick else HERE / "results-short.json")
    if path:
        Path(path).write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {path}")


def _pairs(runs: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(rayfl run, plain run) of each repeat."""
    by = {(r["repeat"], r["kind"]): r for r in runs}
    return [(by[i, "rayfl"], by[i, "plain"]) for i in sorted({r["repeat"] for r in runs})]


if __name__ == "__main__":
    main()
