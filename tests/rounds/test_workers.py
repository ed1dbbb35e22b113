"""Synchronous rounds on the worker pool: actor calls per round, and a worker dying mid-run.

Tiny runs as in ``test_rounds.py``: 20 clients, a 16-unit MLP, 500 evaluation images, two workers.
"""

from __future__ import annotations

import math
import time

import numpy as np
import psutil
import pytest
import ray

from rayfl.clients.pool import WorkerPool, spread
from rayfl.clients.worker import make_pool
from rayfl.config import load_config
from rayfl.rounds.loop import RoundServer
from rayfl.runtime.data import load_data, put_data

TINY = [
    "data.num_clients=20",
    "model.hidden=[16]",
    "eval.max_samples=500",
    "client.num_workers=2",
    "client.num_cpus=0.5",  # room for a third (fresh) worker on the 2-CPU test Ray
    "selection.d=6",
]


def start(preset, *extra):
    cfg = load_config(preset, [*TINY, *extra])
    ds, part = load_data(cfg)
    data = put_data(ds, part)
    workers = make_pool(cfg, max_concurrency=4)
    info = ray.get([w.attach.remote(data) for w in workers])
    server = RoundServer(cfg, data, workers, part.sizes())
    server.data = data  # for the tests' own pools
    return server, workers, info


def bids(worker, client_ids, w_ref):
    """The incentive selector's ``bid`` query on one worker, cap 1.0, round 0: one list per client."""
    return worker.query.remote("bid", client_ids, 1.0, 0, w_ref)


def stop(workers):
    for w in workers:
        ray.kill(w)


def test_an_incentive_round_makes_o_log_steps_calls_per_worker(ray_session):
    """Bargaining sends each worker a window of offers per message (k, ..., 2k - 1), not one
    call per step pair: ~500 steps per bargain take ~10 calls per worker, not ~250."""
    server, workers, _ = start("incentive", "iterations=1")
    try:
        row, record, _ = server.round()
    finally:
        stop(workers)
    steps = max(record["steps"])
    passes = len(record["announced_caps"])
    assert steps > 400  # the spec's defaults: ~500 offers per bargain
    assert server.received["selection"]["Bid"] == 20
    # bids: one call per worker per pass; replies: log2(steps) + 2 windows per pass
    assert server.calls["selection"] <= passes * len(workers) * (1 + math.log2(steps) + 3)
    # one call per worker at most (training spreads its clients, records keep them by id)
    assert 1 <= server.calls["training"] <= len(workers)
    assert 1 <= server.calls["records"] <= len(workers)
    assert row["sys/worker_failures"] == 0


def test_a_restarted_worker_without_data_is_attached_again(ray_session):
    """A worker that died idle comes back from Ray without data (NotAttachedError): the pool
    re-runs its call on a live worker, attaches it again and then gives it work."""
    server, workers, _ = start("incentive", "iterations=1")
    fresh = make_pool(server.cfg, max_concurrency=4, size=1)[0]  # as Ray restarts one: no data
    w_ref = ray.put(server.w)
    try:
        ids = list(range(20))
        want = sorted(
            (
                b
                for _, lists in server.pool.map(ids, lambda w, part: bids(w, part, w_ref))
                for one in lists
                for b in one
            ),
            key=lambda b: b.client_id,
        )
        pool = WorkerPool([fresh, workers[1]], server.data)
        got = [
            b
            for _, lists in pool.map(ids, lambda w, p: bids(w, p, w_ref))
            for one in lists
            for b in one
        ]
        assert pool.failures == 1 and not pool.alive[0]
        assert sorted(got, key=lambda b: b.client_id) == want  # all 20 bids, the same
        deadline = time.perf_counter() + 60
        while not pool.alive[0]:
            assert time.perf_counter() < deadline
            pool.check_restarted()
            time.sleep(0.1)
        parts = pool.map(ids, lambda w, p: bids(w, p, w_ref))
        assert len(parts) == 2 and pool.failures == 1  # both workers serve again
    finally:
        stop([*workers, fresh])


def test_work_spreads_a_rounds_clients_evenly_over_the_workers(ray_session):
    """With ``work`` (the training phase) the pool places clients so that the workers' totals
    are even; without it a client keeps its worker (id mod W), as the selection's queries want.
    Six even ids of eight: mod 2 gives one worker six of them."""
    server, workers, _ = start("incentive", "iterations=1")
    w_ref = ray.put(server.w)
    ids = [0, 2, 4, 6, 8, 10, 1, 3]
    try:
        kept = server.pool.map(ids, lambda w, p: bids(w, p, w_ref))
        spread = server.pool.map(ids, lambda w, p: bids(w, p, w_ref), work=lambda i: 1.0)
        sized = server.pool.map(
            ids, lambda w, p: bids(w, p, w_ref), work=lambda i: float(server.sizes[i])
        )
    finally:
        stop(workers)
    assert sorted(len(part) for part, _ in kept) == [2, 6]
    assert sorted(len(part) for part, _ in spread) == [4, 4]
    loads = [sum(int(server.sizes[i]) for i in part) for part, _ in sized]
    assert len(loads) == 2 and abs(loads[0] - loads[1]) <= max(int(server.sizes[i]) for i in ids)
    replies = [
        sorted(b.client_id for _, lists in r for one in lists for b in one) for r in (kept, spread)
    ]
    assert replies[0] == replies[1] == sorted(ids)  # every client answered, wherever it went


def test_spread_balances_the_greedy_way():
    """Largest first to the least loaded worker: the totals differ by at most the largest cost,
    and the placement depends only on the clients and costs (not on their order)."""
    rng = np.random.default_rng(0)
    for _ in range(50):
        clients = rng.choice(1000, size=int(rng.integers(1, 40)), replace=False).tolist()
        cost = {c: float(rng.integers(20, 200)) for c in clients}
        workers = list(range(int(rng.integers(1, 5))))
        placed = spread(clients, cost.__getitem__, workers)
        loads = [sum(cost[c] for c in clients if placed[c] == w) for w in workers]
        assert max(loads) - min(loads) <= max(cost.values())
        assert spread(clients[::-1], cost.__getitem__, workers) == placed


def _client_worker_pids() -> dict[int, str]:
    """ClientWorker actor processes of this test session's Ray (children of this process)."""
    out = {}
    for p in psutil.Process().children(recursive=True):
        try:
            cmd = " ".join(p.cmdline())
        except psutil.Error:
            continue
        if cmd.startswith("ray::ClientWorker"):
            out[p.pid] = cmd
    return out


def _kill(pid: int) -> None:
    # Only a ClientWorker of our own Ray session, found among this process's children.
    assert pid in _client_worker_pids(), f"pid {pid} is not one of our ClientWorker processes"
    psutil.Process(pid).kill()


def _wait_alive(server, i, timeout_s=120.0):
    deadline = time.perf_counter() + timeout_s
    while not server.pool.alive[i]:
        assert time.perf_counter() < deadline, f"worker {i} did not come back"
        server.pool.check_restarted()
        time.sleep(0.2)


@pytest.mark.parametrize("preset", ["incentive", "pow-d"])
def test_a_worker_killed_mid_run_changes_nothing(ray_session, preset):
    """Worker 0 is killed twice: right after its 2nd call of round 1 went out (incentive: the
    first bargaining message, so the losses behind its clients' bids die with it; pow-d: the
    training), and while idle before round 2. Ray restarts it (max_restarts); the pool re-runs the lost calls on
    the live worker and takes worker 0 back once attached. Client work is a pure function of
    (seed, client, round): the run ends with the same bytes as an undisturbed one."""
    rounds = 4
    server, workers, _ = start(preset, f"iterations={rounds}")
    try:
        undisturbed = [server.round()[1] for _ in range(rounds)]
        w_ref = server.w.copy()
    finally:
        stop(workers)

    server, workers, info = start(preset, f"iterations={rounds}")
    victim = workers[0]
    killed: list[int] = []
    calls_in_round_1: list[object] = []
    real_map = server.pool.map

    def map_and_kill(items, submit, key=int, work=None):
        def submit_then_kill(w, part):
            ref = submit(w, part)
            if server.t == 1 and w is victim:
                calls_in_round_1.append(ref)
                if len(calls_in_round_1) == 2:  # its 2nd call: bargaining / training
                    _kill(info[0]["pid"])
                    killed.append(info[0]["pid"])
            return ref

        return real_map(items, submit_then_kill, key, work)

    server.pool.map = map_and_kill
    records = []
    try:
        for t in range(rounds):
            if t == 2:
                _wait_alive(server, 0)  # restarted and attached again after the first kill
                pid = ray.get(victim.info.remote())["pid"]
                assert pid != killed[0]
                _kill(pid)  # dies idle: the next call finds it dead or restarted without data
                killed.append(pid)
            records.append(server.round()[1])
        failures = server.pool.failures
    finally:
        stop(workers)
    assert len(killed) == 2 and failures == 2
    assert np.array_equal(server.w, w_ref)
    for a, b in zip(undisturbed, records, strict=True):
        for k in ("selected", "payments", "steps", "bids", "candidate_losses", "accuracy"):
            assert a[k] == b[k] or (k == "accuracy" and math.isnan(a[k]) and math.isnan(b[k])), k
