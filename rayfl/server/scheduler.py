"""Job scheduling for the K-async server: which worker computes which jobs, and their results.

Jobs go to the least busy live worker. On the virtual clock they go out in batches (one actor call
for up to ``MAX_BATCH`` jobs, in finish order); on the real clock one call per job, so ``ray.wait``
sees each job finish. Each call is filed as a :class:`Batch` under the ObjectRef of its first
submission; a job's *handle* is ``(that ObjectRef, position in the batch)``. A batch whose worker
died is re-run on a live worker (client work is a pure function of (seed, client, version, the
client's state), and a call carries the states it was submitted with, so the re-run gives the
same bytes), and the pool grows when nodes join the cluster.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import ray

from rayfl.clients.pool import WorkerPool, user_error
from rayfl.clients.state import ClientStates
from rayfl.clients.worker import NotAttachedError, make_pool, pool_size
from rayfl.config import ExperimentConfig
from rayfl.errors import RayflError
from rayfl.types import Job, SharedData, Update

WORKER_START_TIMEOUT_S = 300.0
# Jobs per actor call (virtual clock). A dispatch gives each worker one call of its share of the
# jobs, up to this; it matters only when K is over 16 per worker. Each actor call costs the server
# ~0.6 ms of CPU; at K = 100 on 2 workers, 16 made 7 calls per iteration and 64 makes 2: the
# server's CPU per iteration fell 24.0-24.4 -> 18.0-18.6 ms (benchmarks/scale.py, N = 1000).
# Bounded so that one lost worker's re-run (a batch is re-run whole) stays short.
MAX_BATCH = 64
GROW_EVERY_S = 10.0  # how often the server looks for new nodes to put workers on
MAX_RESUBMITS = 10  # tries of one batch of jobs on live workers before the run gives up
_LOST = (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError, NotAttachedError)

Handle = tuple[Any, int]  # (ObjectRef the batch is filed under, the job's position in it)


def worker_concurrency(cfg: ExperimentConfig) -> int:
    """Calls a K-async worker takes at once: every client's job may be in flight on the real
    clock (capped, as Ray keeps a thread per concurrent call slot)."""
    return min(max(1, cfg.data.num_clients) + 16, 100_000)


def make_worker_pool(cfg: ExperimentConfig) -> list[Any]:
    """The K-async worker actors (as many as fit the cluster), not yet attached to the data."""
    return make_pool(cfg, max_concurrency=worker_concurrency(cfg))


@dataclasses.dataclass(frozen=True)
class BatchCall:
    """Virtual clock: several jobs; job j computes on ``weights[slot_j]`` (ObjectRefs).

    The payload holds the versions' ObjectRefs, not their numbers: a re-run after a worker death
    must not depend on versions the server has since freed (a remodelled job of the batch
    released its version; nominal staleness computes on w_t)."""

    jobs: list[tuple[Job, int]]  # (job, slot in weights)
    weights: list[Any]
    states: dict[int, bytes] = dataclasses.field(default_factory=dict)  # client -> packed state
    servers: list[Any] = dataclasses.field(default_factory=list)  # broadcast refs, one per slot


@dataclasses.dataclass(frozen=True)
class OneCall:
    """Real clock: one job on ``weights`` after an injected delay (seconds)."""

    job: Job
    weights: Any
    delay_s: float
    state: bytes | None = None  # the client's packed state, if it has one
    server: Any = None  # the ObjectRef of the rules' broadcast with the weights, if any


@dataclasses.dataclass
class Batch:
    """One actor call in flight (or done), filed under the ObjectRef of its first submission."""

    call: BatchCall | OneCall
    worker: int  # the worker it was last sent to
    ref: Any  # the ObjectRef of its latest submission
    epoch: int  # that worker's incarnation when sent (WorkerPool.epoch)
    left: int  # jobs of the batch not yet consumed
    results: list[Update] | None = None

    @property
    def size(self) -> int:
        return len(self.call.jobs) if isinstance(self.call, BatchCall) else 1


class JobScheduler:
    """The worker pool as the K-async server sees it: submit jobs, resolve handles, survive
    deaths. ``wasted_jobs`` counts submitted jobs dropped before aggregation (remodel).

    A job takes its client's state from ``states`` when it is submitted: the client's previous
    update was taken before this job was dispatched, so that is the state after it."""

    def __init__(
        self,
        cfg: ExperimentConfig,
        data: SharedData,
        states: ClientStates,
        workers: list[Any] | None = None,
    ):
        """``workers``: a pool the driver started already (:func:`make_worker_pool`), so that
        the workers' processes started beside the server's; default: start one here."""
        self.cfg = cfg
        self.states = states
        self._max_concurrency = worker_concurrency(cfg)
        self._last_grow_check = time.perf_counter()
        if workers is None:
            workers = make_worker_pool(cfg)
        try:
            info = ray.get([w.attach.remote(data) for w in workers], timeout=WORKER_START_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            raise RayflError(
                f"{len(workers)} client workers could not start within "
                f"{WORKER_START_TIMEOUT_S:.0f} s: the cluster lacks the resources "
                f"(client.num_cpus={cfg.client.num_cpus}, client.num_gpus={cfg.client.num_gpus})"
                "; lower them or client.num_workers"
            ) from None
        # Liveness: dead workers are pinged until Ray has restarted them (rayfl.clients.pool).
        self.pool = WorkerPool(
            workers, data, info, when_all_dead="resume the run with rayfl run --resume"
        )
        self.workers = self.pool.workers  # the same list; the pool appends grown workers
        self._outstanding = [0] * len(self.workers)  # jobs submitted and not yet consumed
        self._batches: dict[Any, Batch] = {}
        self.wasted_jobs = 0

    # --- submitting ---------------------------------------------------------------------------

    def submit_one(self, job: Job, weights: Any, delay_s: float, server: Any = None) -> Handle:
        """Real clock: one actor call per job (``server``: the broadcast's ObjectRef, if any)."""
        call = OneCall(job, weights, delay_s, self.states.blob(job.client_id), server)
        return (self._send(call, self._least_busy()), 0)

    def submit_batch(
        self,
        jobs: list[Job],
        version_of: Callable[[Job], int],
        refs: Any,
        server_refs: Callable[[int], Any] = lambda version: None,
    ) -> list:
        """Virtual clock: jobs (in finish order) go out in a few batches, one per busy worker.

        ``version_of(job)`` is the version it computes on, ``refs(version)`` its ObjectRef,
        ``server_refs(version)`` the ObjectRef of the rules' broadcast with it (None: none).
        """
        size = max(1, min(MAX_BATCH, math.ceil(len(jobs) / len(self.workers))))
        handles: list[Handle] = []
        for start in range(0, len(jobs), size):
            part = jobs[start : start + size]
            versions = sorted({version_of(j) for j in part})
            slot = {v: n for n, v in enumerate(versions)}
            servers = [server_refs(v) for v in versions]
            call = BatchCall(
                [(j, slot[version_of(j)]) for j in part],
                [refs(v) for v in versions],
                self.states.blobs(j.client_id for j in part),
                servers if any(r is not None for r in servers) else [],
            )
            ref = self._send(call, self._least_busy())
            handles += [(ref, n) for n in range(len(part))]
        return handles

    def _least_busy(self) -> int:
        """The live worker with the fewest outstanding jobs (waits if all are restarting)."""
        return min(self.pool.live(), key=self._outstanding.__getitem__)

    def _send(self, call: BatchCall | OneCall, i: int, batch: Batch | None = None) -> Any:
        """Submits ``call`` to worker i; with ``batch``, re-submits that batch there."""
        worker = self.workers[i]
        # States only when some client has one: a task without state sends nothing more.
        if isinstance(call, OneCall):
            extra = {"server": call.server} if call.server is not None else {}
            state = () if call.state is None and not extra else (call.state,)
            new = worker.compute.remote(call.job, call.weights, call.delay_s, *state, **extra)
        else:
            kwargs: dict[str, Any] = {"states": call.states} if call.states else {}
            if call.servers:  # refs must be top-level arguments for Ray to resolve them
                kwargs["servers"] = len(call.servers)
            new = worker.compute_batch.remote(call.jobs, *call.weights, *call.servers, **kwargs)
        if batch is None:
            batch = Batch(
                call,
                i,
                new,
                self.pool.epoch[i],
                left=len(call.jobs) if isinstance(call, BatchCall) else 1,
            )
            self._batches[new] = batch
            self._outstanding[i] += batch.left
            return new
        self._outstanding[batch.worker] -= batch.left
        self._outstanding[i] += batch.left
        batch.worker, batch.ref, batch.epoch = i, new, self.pool.epoch[i]
        return new

    # --- results ------------------------------------------------------------------------------

    def resolve(self, handles: list[Handle]) -> list[Update]:
        """The Updates behind job handles, fetching each batch once, re-running lost ones."""
        missing = list({h[0] for h in handles if self._batches[h[0]].results is None})
        try:
            values = ray.get([self._batches[r].ref for r in missing])
        except _LOST:
            values = [self._fetch(r) for r in missing]  # one by one, re-running the lost ones
        except ray.exceptions.RayTaskError as e:
            raise user_error(e) from None
        for ref, value in zip(missing, values, strict=True):
            self._batches[ref].results = value if isinstance(value, list) else [value]
        updates = [self._batches[ref].results[n] for ref, n in handles]  # type: ignore[index]
        for h in handles:
            self._consume(h)
        return updates

    def discard(self, handle: Handle) -> None:
        """A submitted job was dropped (remodel) before aggregation: its compute is wasted."""
        self.wasted_jobs += 1
        self._consume(handle)

    def _fetch(self, ref: Any) -> list[Update]:
        """A batch's Updates; if its worker died, the batch is re-run on a live worker."""
        batch = self._batches[ref]
        for _ in range(MAX_RESUBMITS):
            try:
                value = ray.get(batch.ref)
                return value if isinstance(value, list) else [value]
            except _LOST as e:
                self.pool.died(batch.worker, e, batch.epoch)
                self._send(batch.call, self._least_busy(), batch)
            except ray.exceptions.RayTaskError as e:
                raise user_error(e) from None
        raise RayflError(
            f"a batch of client jobs failed {MAX_RESUBMITS} times on different workers: the "
            "cluster is losing workers faster than they restart; check `ray status`"
        )

    def _consume(self, handle: Handle) -> None:
        """A job's result was used or dropped: free the batch once all its jobs are."""
        batch = self._batches[handle[0]]
        batch.left -= 1
        self._outstanding[batch.worker] -= 1
        if batch.left == 0:
            del self._batches[handle[0]]

    # --- growing with the cluster -------------------------------------------------------------

    def maybe_grow(self) -> int:
        """Starts workers on nodes that joined the cluster (autoscaling), every GROW_EVERY_S;
        returns how many it started.

        Only for a pool sized from the cluster (client.num_workers unset) outside a placement
        group (a Tune trial keeps to its reserved bundles). New workers join the rotation when
        their ``attach`` returns, like restarted ones.
        """
        cfg = self.cfg
        now = time.perf_counter()
        if (
            cfg.client.num_workers is not None
            or now - self._last_grow_check < GROW_EVERY_S
            or ray.util.get_current_placement_group() is not None
        ):
            return 0
        self._last_grow_check = now
        try:
            target = pool_size(cfg, ray.cluster_resources())
        except RayflError:
            return 0
        if target <= len(self.workers):
            return 0
        new = make_pool(
            cfg,
            max_concurrency=self._max_concurrency,
            size=target - len(self.workers),
            first_index=len(self.workers),
        )
        for w in new:
            self.pool.add(w)
            self._outstanding.append(0)
        print(f"rayfl: the cluster grew: starting {len(new)} more client workers", flush=True)
        return len(new)
