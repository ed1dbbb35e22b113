"""A real multi-node Ray cluster on this machine (cluster/local.sh: a head and two worker nodes,
each its own raylet): client workers spread over the nodes, the results equal the single-node
virtual-clock run, a tiny tune runs on it, a run submitted with `ray job submit` runs on it, a run
survives losing a worker node, and a node that joins mid-run gets client workers."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest
import torch

from rayfl.partlog import PartLog  # rows flushed so far: parts until the run ends

# About 6 minutes on an idle 2-core machine (the cluster's start, five short runs, a 4-trial
# search, a 3-minute real-clock run while a node joins), 12 under load: in CI's full run, out of
# the quick `-m "not slow"` loop.
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
LOCAL_SH = REPO / "cluster" / "local.sh"
RUN = ["--no-progress", "--no-plot", "--set", "client.num_workers=2"]
NODES = ("head", "node_a", "node_b")
EXAMPLES = REPO / "examples"


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


def _free_ports() -> tuple[int, int, int]:
    """A GCS port, a dashboard port and a base of ~900 free ports (local.sh's layout: the head,
    node_a, node_b and one added node, numbers 0-3)."""
    for base in range(31000, 60000, 1000):
        wanted = [base + 10 * n + k for n in range(4) for k in range(10)]
        wanted += [base + 100 + k for k in range(0, 800, 50)] + [base + 900, base + 901]
        if all(_free(p) for p in wanted):
            return base + 900, base + 901, base
    raise RuntimeError("no free port block for the local cluster")


def _env(cluster: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of the cluster's nodes and the CLI runs. Without the examples folder on
    PYTHONPATH (tests/conftest.py puts it there for the session's own Ray): on this cluster the
    user package examples/rayfl_extras reaches the nodes only through runtime_env."""
    env = dict(os.environ)
    paths = env.get("PYTHONPATH", "").split(os.pathsep)
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p and p != str(EXAMPLES))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["RAY_AUTH_MODE"] = "token"  # local.sh and the test session's Ray both use the token
    env.pop("RAY_ADDRESS", None)
    env.update(cluster or {})
    return env


def _rayfl(args: list[str], timeout: float, env: dict[str, str] | None = None) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "rayfl.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or _env(),
        cwd=REPO,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout + out.stderr


@pytest.fixture(scope="module")
def local_cluster():
    """cluster/local.sh up; always torn down (local.sh down), whatever the tests do."""
    if shutil.which("bash") is None or not hasattr(os, "setsid"):
        pytest.skip("needs bash and POSIX process groups")
    state = tempfile.mkdtemp(prefix="rfl", dir="/tmp")  # short: Unix socket paths <= 107 chars
    gcs, dash, base = _free_ports()
    env = _env(
        {
            "RAYFL_LOCAL_DIR": state,
            "RAYFL_LOCAL_PORT": str(gcs),
            "RAYFL_LOCAL_PORT_BASE": str(base),
            "RAYFL_LOCAL_DASHBOARD": "1",  # the job API, for `ray job submit` (on 127.0.0.1)
            "RAYFL_LOCAL_DASHBOARD_PORT": str(dash),
            "RAYFL_PYTHON": sys.executable,
        }
    )
    try:
        up = subprocess.run(
            ["bash", str(LOCAL_SH), "up"], capture_output=True, text=True, env=env, timeout=900
        )
        assert up.returncode == 0, up.stderr[-3000:]
        yield {
            "address": up.stdout.strip().splitlines()[-1],
            "dashboard": f"http://127.0.0.1:{dash}",
            "dir": Path(state),
            "env": env,
        }
    finally:  # `down` stops the nodes of `local.sh add` too
        subprocess.run(["bash", str(LOCAL_SH), "down"], env=env, timeout=120)
        left = [
            p
            for p in psutil.process_iter(["cmdline"])
            if state in " ".join(p.info["cmdline"] or [])
        ]
        shutil.rmtree(state, ignore_errors=True)
        assert not left, f"local.sh down left processes: {[p.pid for p in left]}"


def _node_processes(cluster: dict) -> dict[str, list[psutil.Process]]:
    """Each node's processes (its `ray start --block` and everything it spawned)."""
    out = {}
    for name in NODES:
        try:
            root = psutil.Process(int((cluster["dir"] / f"{name}.pid").read_text()))
            out[name] = [root, *root.children(recursive=True)]
        except psutil.Error:  # a process ended while we looked
            out[name] = []
    return out


def _title(p: psutil.Process) -> str:
    try:
        return (p.cmdline() or [""])[0]
    except psutil.Error:
        return ""


def _read(run_dir: Path) -> tuple[dict, list[dict], list[dict]]:
    summary = json.loads((run_dir / "summary.json").read_text())
    metrics = pq.read_table(run_dir / "metrics.parquet").to_pylist()
    updates = pq.read_table(run_dir / "updates.parquet").to_pylist()
    return summary, metrics, updates


def _nodes(cluster: dict) -> list[dict]:
    """``ray.nodes()`` of the cluster (from a short-lived driver: this test session has its own
    Ray)."""
    code = (
        "import json, sys, ray\n"
        "ray.init(address=sys.argv[1], logging_level='ERROR', log_to_driver=False)\n"
        "print(json.dumps(ray.nodes(), default=str))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, cluster["address"]],
        capture_output=True,
        text=True,
        timeout=300,
        env=cluster["env"],
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_cluster_check_lists_the_three_nodes(local_cluster):
    out = _rayfl(
        ["cluster", "check", "tiny", "--set", "client.num_workers=2", "--address",
         local_cluster["address"]],
        timeout=300,
        env=local_cluster["env"],
    )  # fmt: skip
    assert "3 nodes alive" in out
    for label in ("node_head=1", "node_a=1", "node_b=1"):
        assert label in out
    assert "pool: 2 client workers" in out


def test_workers_spread_over_nodes_and_match_the_single_node_run(
    local_cluster, ray_address, tmp_path
):
    multi, single = tmp_path / "multi", tmp_path / "single"
    _rayfl(["run", "tiny", "--address", local_cluster["address"], "-o", str(multi), *RUN], 600)
    _rayfl(["run", "tiny", "--address", ray_address, "-o", str(single), *RUN], 600)
    s_multi, m_multi, u_multi = _read(multi)
    s_single, m_single, u_single = _read(single)

    # Two client workers, on two different nodes (the worker nodes: the head has 0 CPUs).
    assert s_multi["num_workers"] == 2
    assert len(set(s_multi["worker_nodes"])) == 2
    assert {u["worker"] for u in u_multi} == {0, 1}

    # The virtual clock makes the cluster invisible: same model bytes, same numbers.
    w_multi = torch.load(multi / "model.pt", weights_only=True)
    w_single = torch.load(single / "model.pt", weights_only=True)
    assert w_multi.keys() == w_single.keys()
    for key in w_multi:
        assert torch.equal(w_multi[key], w_single[key]), key
    keep = ("train/", "eval/", "agg/", "iteration")
    strip = lambda rows: [{k: v for k, v in r.items() if k.startswith(keep)} for r in rows]  # noqa: E731
    assert strip(m_multi) == strip(m_single)
    same = lambda rows: [(u["iteration"], u["client_id"], u["version"]) for u in rows]  # noqa: E731
    assert same(u_multi) == same(u_single)
    assert s_multi["final_accuracy"] == s_single["final_accuracy"]


def test_a_user_package_reaches_every_node_by_runtime_env(local_cluster, tmp_path):
    """examples/experiment.yaml is made of examples/rayfl_extras' rules, server optimizer,
    partitioner and client task (with per-client state); sync-experiment.yaml adds its selector. The nodes cannot import that package; `--py-module` ships it (Ray's runtime_env
    py_modules) to the server and the workers on the worker nodes."""
    args = ["run", str(EXAMPLES / "experiment.yaml"), "--address", local_cluster["address"]]
    args += [*RUN, "--set", "iterations=12", "--set", "eval.every=6"]
    # Importable in the driver only: the server actor, on a worker node, cannot import it.
    driver_only = dict(local_cluster["env"], PYTHONPATH=str(EXAMPLES))
    failed = subprocess.run(
        [sys.executable, "-m", "rayfl.cli", *args, "-o", str(tmp_path / "unshipped")],
        capture_output=True, text=True, timeout=600, env=driver_only, cwd=REPO,
    )  # fmt: skip
    assert failed.returncode == 2, failed.stdout[-2000:] + failed.stderr[-2000:]
    error = failed.stderr.strip().splitlines()[-1]
    assert "cannot import 'rayfl_extras.rules'" in error and "runtime_env" in error
    assert "Traceback" not in failed.stderr
    assert (tmp_path / "unshipped" / "config.yaml").is_file()  # the run folder stays readable

    shipped = tmp_path / "shipped"
    ship = ["--py-module", str(EXAMPLES / "rayfl_extras")]
    _rayfl([*args, *ship, "-o", str(shipped)], timeout=600, env=local_cluster["env"])
    summary, metrics, _ = _read(shipped)
    assert summary["status"] == "finished" and summary["iterations"] == 12
    assert len(set(summary["worker_nodes"])) == 2  # the workers ran on both worker nodes
    assert all(row["extras/trimmed"] == 2.0 for row in metrics)  # the user's aggregator ran
    bounds = {row["extras/clip_bound"] for row in metrics}
    assert len(bounds) > 1  # the user's stateful rule ran, its state moved
    assert summary["final_accuracy"] > 0.2  # 10 classes: it learns
    from rayfl.runtime.checkpoint import read_checkpoint

    # the user's client task ran in the workers on the worker nodes: its per-client momentum
    # came back with the updates and the server keeps it
    assert len(read_checkpoint(shipped)["client_states"]) > 0

    # Synchronous rounds with the user's selector: its query handler runs in the client workers
    # on the worker nodes, its replies reach the server, its columns land in rounds.parquet.
    rounds_dir = tmp_path / "sync"
    sync = ["run", str(EXAMPLES / "sync-experiment.yaml"), "--address", local_cluster["address"]]
    _rayfl(
        [*sync, *RUN, *ship, "--set", "iterations=4", "-o", str(rounds_dir)],
        600,
        local_cluster["env"],
    )
    summary = json.loads((rounds_dir / "summary.json").read_text())
    rounds = pq.read_table(rounds_dir / "rounds.parquet").to_pylist()
    assert summary["status"] == "finished" and len(rounds) == 4
    assert len(set(summary["worker_nodes"])) == 2
    assert all(len(r["utilities"]) == 20 and len(r["selected"]) == 4 for r in rounds)


def test_tiny_tune_runs_on_the_cluster(local_cluster, tmp_path):
    out = _rayfl(
        ["tune", str(REPO / "tune_configs" / "smoke.yaml"), "--address",
         local_cluster["address"], "--storage-path", str(tmp_path), "--set", "iterations=10",
         "--set", "eval.every=5", "--set", "checkpoint_every=0"],
        timeout=900,
        env=local_cluster["env"],
    )  # fmt: skip
    assert "best config:" in out
    [search] = [p for p in tmp_path.iterdir() if (p / "trials.parquet").is_file()]
    trials = pq.read_table(search / "trials.parquet").to_pandas()
    assert len(trials) == 4
    assert trials["objective"].notna().all()


def test_a_run_submitted_with_ray_job_submit(local_cluster, tmp_path):
    """`ray job submit` through the head's job API (the dashboard, on 127.0.0.1): the driver runs
    on the head, in the uploaded working dir; the run folder goes to the absolute -o path."""
    work, run_dir = tmp_path / "working_dir", tmp_path / "run"
    work.mkdir()
    (work / "README").write_text("the working dir of a test job\n")
    ray_cli = str(Path(sys.executable).parent / "ray")
    job_api = ["--address", local_cluster["dashboard"]]
    sid = f"rayfl-test-{os.getpid()}-{time.time_ns()}"
    out = subprocess.run(
        [ray_cli, "job", "submit", *job_api, "--submission-id", sid, "--working-dir", str(work),
         "--", "rayfl", "run", "tiny", "--set", "iterations=10", "--no-progress", "--no-plot",
         "-o", str(run_dir)],
        capture_output=True,
        text=True,
        timeout=900,
        env=local_cluster["env"],  # RAY_AUTH_MODE=token: the job API wants the token too
        cwd=tmp_path,
    )  # fmt: skip
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    status = subprocess.run(
        [ray_cli, "job", "status", *job_api, sid],
        capture_output=True,
        text=True,
        timeout=300,
        env=local_cluster["env"],
    )
    said = re.sub(r"\x1b\[[0-9;]*m", "", status.stdout + status.stderr)  # no colours
    assert f"Job '{sid}' succeeded" in said, said[-3000:]
    assert "rayfl run summary" in text  # `ray job submit` tails the job's log

    summary, metrics, updates = _read(run_dir)
    assert summary["status"] == "finished"
    assert [r["iteration"] for r in metrics] == list(range(10))
    assert summary["jobs_lost"] == 0
    assert summary["updates_aggregated"] == len(updates)


def _start_cli(args, log, cluster):
    """``rayfl ARGS`` against the local cluster in the background, its output into ``log``."""
    with open(log, "w") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "rayfl.cli", *args],
            stdout=f,
            stderr=subprocess.STDOUT,
            env=cluster["env"],
            cwd=REPO,
        )


def test_a_run_survives_losing_a_worker_node(local_cluster, tmp_path):
    """Kill one worker node's raylet mid-run: the run finishes, and every update is counted once."""
    run_dir, log = tmp_path / "run", tmp_path / "run.log"
    args = ["run", "tiny", "--address", local_cluster["address"], "-o", str(run_dir), *RUN]
    args += ["--set", "iterations=300"]
    proc = _start_cli(args, log, local_cluster)
    try:
        # Wait until both worker nodes run a client worker and the run has made progress.
        victim = None
        deadline = time.monotonic() + 300
        while victim is None:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the client workers never started"
            procs = _node_processes(local_cluster)
            titles = {n: [_title(p) for p in ps] for n, ps in procs.items()}
            workers = [
                n for n in ("node_a", "node_b") if any("ClientWorker" in t for t in titles[n])
            ]
            if len(workers) == 2 and PartLog(run_dir / "metrics.parquet").exists():
                # The node without the server actor (losing the server ends any run).
                victim = next(n for n in workers if not any("KAsyncServer" in t for t in titles[n]))
            time.sleep(0.5)
        [raylet] = [p for p in procs[victim] if _title(p).endswith("/raylet")]
        raylet.send_signal(signal.SIGKILL)
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    assert "client worker" in text and "died" in text  # the log says what happened

    summary, metrics, updates = _read(run_dir)
    assert summary["status"] == "finished"
    assert summary["worker_failures"] >= 1
    assert [r["iteration"] for r in metrics] == list(range(300))
    # No update lost or counted twice.
    assert summary["updates_aggregated"] == sum(r["agg/k"] for r in metrics) == len(updates)
    keys = [(u["iteration"], u["client_id"]) for u in updates]
    assert len(keys) == len(set(keys))


def test_a_node_that_joins_mid_run_gets_workers(local_cluster, tmp_path):
    """With client.num_workers unset the pool is what the cluster's CPUs fit (the server actor
    takes 0 CPUs, a worker 1). `local.sh add` joins a node mid-run: the server starts a worker on
    it (it looks every GROW_EVERY_S), which then computes updates, and no job is lost. The run is
    long (real clock with injected delays); it is stopped with SIGTERM as soon as the new worker's
    updates are on disk, so the test takes what the node's start takes, not the whole run.

    Last in the module: it leaves the cluster a node bigger. It runs after the node-loss test, so
    the pool starts from the CPUs of the nodes alive now."""
    nodes = _nodes(local_cluster)
    before = int(sum(n["Resources"].get("CPU", 0) for n in nodes if n["Alive"]))
    assert before >= 1, nodes
    run_dir, log = tmp_path / "run", tmp_path / "run.log"
    args = ["run", "tiny", "--address", local_cluster["address"], "-o", str(run_dir)]
    args += ["--no-progress", "--no-plot", "--set", "iterations=2000"]
    args += ["--set", "clock.kind=real", "--set", "clock.time_scale=0.5"]
    proc = _start_cli(args, log, local_cluster)
    updates = PartLog(run_dir / "updates.parquet")
    try:
        deadline = time.monotonic() + 300
        while not updates.exists():  # the run is under way
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the run never started"
            time.sleep(0.5)
        add = subprocess.run(
            ["bash", str(LOCAL_SH), "add", "c"],
            capture_output=True,
            text=True,
            env=local_cluster["env"],
            timeout=900,
        )
        assert add.returncode == 0, add.stderr[-3000:]
        deadline = time.monotonic() + 300
        while before not in set(updates.table().column("worker").to_pylist()):
            assert proc.poll() is None, "the run ended before the new worker computed updates"
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)  # stops like Ctrl-C: summary, metrics, checkpoint
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert proc.returncode == 143, text[-3000:]
    assert "the cluster grew: starting 1 more client workers" in text

    assert [n for n in _nodes(local_cluster) if n["Alive"] and "node_c" in n["Resources"]]
    summary, metrics, rows = _read(run_dir)
    assert summary["status"] == "interrupted"
    assert before in {u["worker"] for u in rows}  # the new worker (index `before`) did jobs
    assert [r["iteration"] for r in metrics] == list(range(len(metrics)))
    keys = [(u["iteration"], u["client_id"]) for u in rows]
    assert len(keys) == len(set(keys))
    assert sum(r["agg/k"] for r in metrics) == len(rows)  # every logged iteration's updates
