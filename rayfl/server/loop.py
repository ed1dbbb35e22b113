"""The K-asynchronous server loop (AKAFL-RJ spec sections 1-3; Algorithm 1).

Every client is always busy computing one update on the version it last received. Each iteration
the server takes the first K_t updates to arrive (virtual or real clock), runs the aggregation
rule chain (K-async SGD, WKAFL, ...), makes w_{t+1} = w_t - eta_t * g_t, and sends w_{t+1} to
exactly those K_t clients. Each global version lives in the Ray object store once (``ray.put``)
and is freed when no live job refers to it.

``KAsyncServer`` is a plain class; the driver runs it as a Ray actor and calls ``run(n)`` in
chunks, so it can show progress and write results while the server works.
"""

from __future__ import annotations

import heapq
import math
import time
from typing import Any

import numpy as np
import ray
import torch

from rayfl import seeding
from rayfl.aggregation import build_rules, final_direction, start_step
from rayfl.aggregation.control import Decision, Feedback, build_controls, decide
from rayfl.clients.pool import WorkerPool
from rayfl.clients.worker import NotAttachedError, SharedData, make_pool, pool_size
from rayfl.config import ExperimentConfig
from rayfl.errors import RayflError
from rayfl.heap import HeapTrimmer
from rayfl.models import build_model, get_flat, set_flat
from rayfl.server.clock import RealQueue, SpeedModel, VirtualQueue
from rayfl.server.types import Job, Update
from rayfl.training import Normalizer, evaluate

WORKER_START_TIMEOUT_S = 300.0
MAX_BATCH = 16  # jobs per actor call (virtual clock)
CHECKPOINT_FORMAT = 1  # bump when the checkpoint's layout changes
GROW_EVERY_S = 10.0  # how often the server looks for new nodes to put workers on
MAX_RESUBMITS = 10  # tries of one batch of jobs on live workers before the run gives up


def check_update(u: Update, shape: tuple[int, ...], max_norm: float | None) -> str | None:
    """Why an update must be rejected before aggregation: shape | dtype | nonfinite | norm;
    None if it is fine."""
    v = u.vector
    if not isinstance(v, np.ndarray) or v.shape != shape:
        return "shape"
    if v.dtype != np.float32:
        return "dtype"
    if not math.isfinite(u.loss):
        return "nonfinite"
    with np.errstate(over="ignore", invalid="ignore"):
        sq = float(np.dot(v, v))  # one BLAS pass: NaN or inf anywhere makes it non-finite
    if not math.isfinite(sq):
        if not np.isfinite(v).all():
            return "nonfinite"
        return None if max_norm is None else "norm"  # finite entries, the square overflowed
    if max_norm is not None and sq > max_norm * max_norm:
        return "norm"
    return None


def eval_subset(
    cfg: ExperimentConfig, x_test: np.ndarray, y_test: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The server's evaluation set: the test set, or ``eval.max_samples`` of it (seeded, in
    test-set order)."""
    if cfg.eval.max_samples is None or cfg.eval.max_samples >= len(y_test):
        return x_test, y_test
    pick = seeding.rng(cfg.seed, seeding.EVAL_SUBSET).choice(
        len(y_test), size=cfg.eval.max_samples, replace=False
    )
    pick.sort()
    return x_test[pick], y_test[pick]


class KAsyncServer:
    """The server: global model, versions, the job queue, the rule chain, evaluation."""

    def __init__(self, cfg: ExperimentConfig, data: SharedData):
        self.cfg = cfg
        self.data = data
        self._trim_heap = HeapTrimmer()  # rayfl.heap: the server lives for the whole run

    def start(self, restore: dict[str, Any] | None = None) -> dict[str, Any]:
        """Builds w_0, starts the worker pool and dispatches every client on w_0; or, with
        ``restore`` (a ``checkpoint()``), continues exactly where that checkpoint left off.

        Separate from ``__init__`` so that a user error (a model factory that fails to import, a
        pool that does not fit) reaches the driver as a ``RayflError``, not as a dead actor.
        """
        cfg, data = self.cfg, self.data
        n = cfg.data.num_clients
        torch.set_num_threads(max(1, math.floor(cfg.server.num_cpus)))
        use_gpu = bool(ray.get_gpu_ids()) and torch.cuda.is_available()
        self.device = torch.device("cuda" if use_gpu else "cpu")

        # --- global model w_0 ---
        self.model = build_model(cfg.model, data.input_shape, data.num_classes, cfg.seed).to(
            self.device
        )
        self.w = get_flat(self.model)  # (P,) float32
        self.t = 0
        self.k = cfg.aggregation.k
        self.previous_direction: np.ndarray | None = None
        self.rule = build_rules(cfg.aggregation.rules)
        self.rule_state = self.rule.init()
        self.controls = build_controls(cfg.aggregation.control)
        self.control_state = [c.init(self.k) for _, c in self.controls]
        self._by_version: list[tuple[int, int, float]] = []  # (version, client, finish) heap
        self.maintained = 0  # candidates rejected by judgement
        self.remodels = 0  # clients resent by remodel
        self.wasted_jobs = 0  # submitted jobs dropped before aggregation
        self.rejected: dict[str, int] = {}  # broken updates rejected, by reason
        self.jobs_dispatched = 0  # every job ever started (restored jobs count once)

        # --- evaluation data: the test set, or a fixed seeded subset of it ---
        x_test, y_test = ray.get([data.x_test, data.y_test])
        self.x_eval, self.y_eval = eval_subset(cfg, x_test, y_test)
        # Judgement's validation set: a fixed seeded subset of the test set (spec section 6).
        n_val = min(cfg.eval.validation_samples, len(y_test))
        pick = seeding.rng(cfg.seed, seeding.VALIDATION).choice(len(y_test), n_val, replace=False)
        pick.sort()
        self.x_val, self.y_val = x_test[pick], y_test[pick]
        self.normalize = Normalizer(data.mean, data.std, self.device)

        # --- worker pool ---
        self._max_concurrency = min(max(1, cfg.data.num_clients) + 16, 100_000)
        self._last_grow_check = time.perf_counter()
        workers = make_pool(cfg, max_concurrency=self._max_concurrency)
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
        # first ObjectRef of a batch -> [results, jobs left, worker, payload, current ObjectRef,
        # the worker's epoch when sent]
        self._batches: dict[Any, list[Any]] = {}

        # --- versions in the object store, ref-counted by live jobs ---
        self.versions: dict[int, list[Any]] = {}  # version -> [ObjectRef, live job count]
        if restore is None:
            self._put_version(0, self.w)
        else:
            self._restore_state(restore)

        # --- the clock and its job queue; every client starts on w_0 ---
        speed = SpeedModel(
            cfg.clock,
            n,
            work=cfg.client.batch_size * cfg.client.local_steps,
            model_bytes=self.w.nbytes,
            seed=cfg.seed,
        )
        if cfg.clock.kind == "virtual":
            lookahead = cfg.clock.lookahead or max(2 * cfg.aggregation.k, 4 * len(self.workers))
            self.queue: VirtualQueue | RealQueue = VirtualQueue(
                speed,
                self._submit_batch,
                lookahead,
                discard=self._discard,
                eager=cfg.aggregation.staleness == "true",
            )
        else:
            self.queue = RealQueue(
                speed, self._submit_one, cfg.clock.time_scale, discard=self._discard
            )
        self.started_at = time.perf_counter()
        self.updates_aggregated = 0
        if restore is None:
            for client_id in range(n):
                self._dispatch(client_id, 0)
        else:
            self.updates_aggregated = restore["updates_aggregated"]
            self.started_at -= restore["wall_s"]
            for job in restore["jobs"]:
                self._redispatch(job)
        self.queue.top_up()
        return self.describe()

    # --- checkpoints --------------------------------------------------------------------------

    def checkpoint(self) -> dict[str, Any]:
        """The server's full state after iteration t - 1: enough to continue bit-identically.

        Holds the global model, every version a live job still holds (as ObjectRefs, which
        ``write_checkpoint`` resolves), the rule and control states (momentum, adaptive K,
        judgement's EWMA), the counters, and the live jobs (the virtual clock's heap). Every
        random draw in the engine is a pure function of (seed, stream, client, version), so no
        generator state needs saving.
        """
        jobs = sorted(self.queue.current.values())
        held = sorted({j.version for j in jobs} | {self.t})
        return {
            "format": CHECKPOINT_FORMAT,
            "t": self.t,
            "k": self.k,
            "w": self.w,
            "previous_direction": self.previous_direction,
            "rule_state": self.rule_state,
            "control_state": self.control_state,
            "counters": {
                "maintained": self.maintained,
                "remodels": self.remodels,
                "wasted_jobs": self.wasted_jobs,
                "rejected": dict(self.rejected),
                "worker_failures": self.pool.failures,
                "jobs_dispatched": self.jobs_dispatched,
            },
            "updates_aggregated": self.updates_aggregated,
            "wall_s": time.perf_counter() - self.started_at,
            "now": self.queue.now,
            "jobs": [(j.finish, j.client_id, j.version) for j in jobs],
            # ObjectRefs, not arrays: the caller gets the versions straight from the object store
            # (write_checkpoint), instead of one big object of a different size each time,
            # which fragments the store so that it keeps taking fresh pages.
            "versions": {v: self.versions[v][0] for v in held},
        }

    def _restore_state(self, state: dict[str, Any]) -> None:
        if state.get("format") != CHECKPOINT_FORMAT:
            raise RayflError(
                f"checkpoint format {state.get('format')!r} is not {CHECKPOINT_FORMAT}: it was "
                "written by another rayfl version; start the run again"
            )
        if state["w"].shape != self.w.shape:
            raise RayflError(
                f"the checkpoint's model has {state['w'].size} parameters, the config's "
                f"{self.w.size}: resume with the run's own config.yaml"
            )
        self.t, self.k = state["t"], state["k"]
        self.w = state["w"]
        self.previous_direction = state["previous_direction"]
        self.rule_state, self.control_state = state["rule_state"], state["control_state"]
        c = state["counters"]
        self.maintained, self.remodels, self.wasted_jobs = (
            c["maintained"],
            c["remodels"],
            c["wasted_jobs"],
        )
        self.rejected, self.pool.failures = dict(c["rejected"]), c["worker_failures"]
        self.jobs_dispatched = c["jobs_dispatched"]
        for v, w in state["versions"].items():
            self._put_version(v, w)
        self.queue_now = state["now"]

    def _redispatch(self, job: tuple[float, int, int]) -> None:
        """Puts a checkpointed live job back in flight (same finish time on the virtual clock)."""
        finish, client_id, version = job
        self.versions[version][1] += 1
        restored = self.queue.restore(Job(finish, client_id, version), self.queue_now)
        if self.controls:
            heapq.heappush(self._by_version, (version, client_id, restored.finish))

    # --- bookkeeping helpers ------------------------------------------------------------------

    def _put_version(self, version: int, w: np.ndarray) -> None:
        self.versions[version] = [ray.put(w), 0]

    def _dispatch(self, client_id: int, version: int) -> None:
        self.jobs_dispatched += 1
        self.versions[version][1] += 1
        job = self.queue.dispatch(client_id, version)
        if self.controls:
            heapq.heappush(self._by_version, (version, client_id, job.finish))

    def _clients_older_than(self, version: int) -> list[int]:
        """Live clients whose job is on a version < ``version`` (O(found * log N), not O(N))."""
        found: list[tuple[int, int, float]] = []
        while self._by_version and self._by_version[0][0] < version:
            entry = heapq.heappop(self._by_version)
            job = self.queue.current.get(entry[1])
            if job is not None and job.version == entry[0] and job.finish == entry[2]:
                found.append(entry)
        for entry in found:  # they stay live until the caller resends them
            heapq.heappush(self._by_version, entry)
        return [c for _, c, _ in found]

    def _release(self, version: int) -> None:
        entry = self.versions[version]
        entry[1] -= 1
        if entry[1] == 0 and version != self.t:
            del self.versions[version]  # no live job holds it: the object store frees it

    def _least_busy(self) -> int:
        """The live worker with the fewest outstanding jobs (waits if all are restarting)."""
        return min(self.pool.live(), key=self._outstanding.__getitem__)

    def _submit_one(self, job: Job, delay_s: float) -> Any:
        """Real clock: one actor call per job, so ``ray.wait`` sees each job finish."""
        payload = ("one", job, self.versions[job.version][0], delay_s)
        ref = self._send(payload, self._least_busy())
        return (ref, 0)

    def _submit_batch(self, jobs: list[Job]) -> list[Any]:
        """Virtual clock: jobs (in finish order) go out in a few batches, one per busy worker."""
        size = max(1, min(MAX_BATCH, math.ceil(len(jobs) / len(self.workers))))
        handles: list[Any] = []
        for start in range(0, len(jobs), size):
            part = jobs[start : start + size]
            versions = sorted({self._compute_version(j) for j in part})
            slot = {v: n for n, v in enumerate(versions)}
            # The payload holds the versions' ObjectRefs, not their numbers: a re-run after a
            # worker death must not depend on versions the server has since freed (a remodelled
            # job of the batch released its version; nominal staleness computes on w_t).
            payload = (
                "batch",
                [(j, slot[self._compute_version(j)]) for j in part],
                [self.versions[v][0] for v in versions],
            )
            ref = self._send(payload, self._least_busy())
            handles += [(ref, n) for n in range(len(part))]
        return handles

    def _send(self, payload: tuple[Any, ...], i: int, ref: Any = None) -> Any:
        """Submits a payload to worker i; with ``ref``, re-submits the batch filed under it."""
        if payload[0] == "one":
            _, job, weights_ref, delay_s = payload
            new = self.workers[i].compute.remote(job, weights_ref, delay_s)
            n = 1
        else:
            _, jobs, weights_refs = payload
            new = self.workers[i].compute_batch.remote(jobs, *weights_refs)
            n = len(jobs)
        self._outstanding[i] += n
        if ref is None:
            self._batches[new] = [None, n, i, payload, new, self.pool.epoch[i]]
            return new
        entry = self._batches[ref]
        self._outstanding[entry[2]] -= entry[1]
        self._outstanding[i] += entry[1] - n
        entry[2], entry[4], entry[5] = i, new, self.pool.epoch[i]
        return new

    def _maybe_grow(self) -> None:
        """Starts workers on nodes that joined the cluster (autoscaling), every GROW_EVERY_S.

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
            return
        self._last_grow_check = now
        try:
            target = pool_size(cfg, ray.cluster_resources())
        except RayflError:
            return
        if target <= len(self.workers):
            return
        new = make_pool(
            cfg,
            max_concurrency=self._max_concurrency,
            size=target - len(self.workers),
            first_index=len(self.workers),
        )
        for w in new:
            self.pool.add(w)
            self._outstanding.append(0)
        if isinstance(self.queue, VirtualQueue) and cfg.clock.lookahead is None:
            # The default window (start()) scales with the pool: keep it at 4 jobs per worker,
            # or the new workers mostly idle. The window does not change any result.
            self.queue.lookahead = max(self.queue.lookahead, 4 * len(self.workers))
        print(f"rayfl: the cluster grew: starting {len(new)} more client workers", flush=True)

    def _fetch(self, ref: Any) -> list[Any]:
        """A batch's Updates; if its worker died, the batch is re-run on a live worker."""
        entry = self._batches[ref]
        for _ in range(MAX_RESUBMITS):
            try:
                value = ray.get(entry[4])
                return value if isinstance(value, list) else [value]
            except (
                ray.exceptions.RayActorError,
                ray.exceptions.ObjectLostError,
                NotAttachedError,
            ) as e:
                self.pool.died(entry[2], e, entry[5])
                self._send(entry[3], self._least_busy(), ref=ref)
        raise RayflError(
            f"a batch of client jobs failed {MAX_RESUBMITS} times on different workers: the "
            "cluster is losing workers faster than they restart; check `ray status`"
        )

    def _discard(self, handle: Any) -> None:
        """A submitted job was dropped (remodel) before aggregation: its compute is wasted."""
        self.wasted_jobs += 1
        self._consume(handle)

    def _compute_version(self, job: Job) -> int:
        """The version a job computes on: its own, or with ``staleness: nominal`` the newest
        (the public WKAFL code's behaviour: staleness only enters the weights and the lr)."""
        return job.version if self.cfg.aggregation.staleness == "true" else self.t

    def _consume(self, handle: Any) -> None:
        """A job's result was used or dropped: free the batch once all its jobs are."""
        entry = self._batches[handle[0]]
        entry[1] -= 1
        self._outstanding[entry[2]] -= 1
        if entry[1] == 0:
            del self._batches[handle[0]]

    def _resolve(self, handles: list[Any]) -> list[Any]:
        """The Updates behind job handles, fetching each batch once."""
        missing = list({h[0] for h in handles if self._batches[h[0]][0] is None})
        try:
            values = ray.get([self._batches[r][4] for r in missing])
        except (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError, NotAttachedError):
            values = [self._fetch(r) for r in missing]  # one by one, re-running the lost ones
        for ref, value in zip(missing, values, strict=True):
            self._batches[ref][0] = value if isinstance(value, list) else [value]
        updates = [self._batches[ref][0][n] for ref, n in handles]
        for h in handles:
            self._consume(h)
        return updates

    # --- the loop -----------------------------------------------------------------------------

    # The driver calls this every CHUNK iterations: no task events to the GCS, which would keep
    # up to 100,000 of them (it grew ~25 MB per hour in the soak); failures still show.
    @ray.method(enable_task_events=False)
    def run(self, iterations: int) -> dict[str, list[dict[str, Any]]]:
        """Runs up to ``iterations`` more iterations; returns their metric and update rows."""
        rows: list[dict[str, Any]] = []
        update_rows: list[dict[str, Any]] = []
        end = min(self.cfg.iterations, self.t + iterations)
        self._maybe_grow()
        while self.t < end:
            row, ups = self.iterate()
            rows.append(row)
            update_rows.extend(ups)
        self._trim_heap()
        return {"metrics": rows, "updates": update_rows}

    def iterate(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """One iteration t: wait for K_t updates, aggregate, make and send w_{t+1}, evaluate."""
        t = self.t
        tick = time.perf_counter()

        # --- wait for the first K valid updates ---
        updates: list[Any] = []
        rejected: dict[str, int] = {}
        wait_s = 0.0
        while len(updates) < self.k:
            taken = self.queue.take(self.k - len(updates))
            if not taken:
                raise RayflError("no client job is in flight: this is a bug, please report it")
            self.queue.top_up()  # keep every worker busy while we wait and aggregate
            waited = time.perf_counter()
            arrived = self._resolve([handle for _, handle in taken])
            wait_s += time.perf_counter() - waited
            for job, _ in taken:
                self._release(job.version)
            for u in arrived:
                reason = check_update(u, self.w.shape, self.cfg.aggregation.max_update_norm)
                if reason is None:
                    updates.append(u)
                    continue
                # A broken update never reaches the model: count it, give the client w_t again.
                rejected[reason] = rejected.get(reason, 0) + 1
                self._dispatch(u.client_id, t)
            if sum(rejected.values()) > self.cfg.data.num_clients + self.k:
                raise RayflError(
                    f"iteration {t}: {sum(rejected.values())} updates rejected in a row "
                    f"({', '.join(sorted(rejected))}): the clients' updates are broken; check "
                    "the model, the learning rates, and aggregation.max_update_norm"
                )
        for reason, n in rejected.items():
            self.rejected[reason] = self.rejected.get(reason, 0) + n

        # --- aggregate: the rule chain makes g_t and eta_t ---
        step = start_step(
            t,
            np.stack([u.vector for u in updates]),
            [t - u.version for u in updates],
            [u.loss for u in updates],
            self.cfg.aggregation.lr,
            self.previous_direction,
        )
        step, self.rule_state = self.rule.update(step, self.rule_state)
        direction = final_direction(step)
        candidate = (self.w - np.float32(step.lr) * direction).astype(np.float32, copy=False)
        self.updates_aggregated += len(updates)

        # --- control rules: judgement, remodel, adaptive K (AKAFL-RJ sections 4-6) ---
        decision = Decision()
        if self.controls:
            cache: list[float] = []

            def evaluate_candidate() -> float:
                if not cache:
                    cache.append(self._accuracy(candidate, self.x_val, self.y_val))
                return cache[0]

            feedback = Feedback(
                iteration=t,
                iterations=self.cfg.iterations,
                k=len(updates),
                loss=step.metrics["train/loss"],
                clients_older_than=self._clients_older_than,
                evaluate=evaluate_candidate,
            )
            decision, self.control_state = decide(self.controls, self.control_state, feedback)
        if decision.keep_previous:
            self.maintained += 1  # judgement: w_{t+1} = w_t
        else:
            self.w = candidate
            self.previous_direction = direction
        self.t = t + 1

        # --- send w_{t+1} to the K clients that just reported, and to remodelled ones ---
        self._put_version(self.t, self.w)
        for u in updates:
            self._dispatch(u.client_id, self.t)
        for client_id in decision.resend:
            old = self.queue.drop(client_id)
            if old is not None:
                self._release(old.version)
                self.remodels += 1
            self._dispatch(client_id, self.t)
        if decision.k is not None:
            self.k = min(max(1, decision.k), self.cfg.data.num_clients)
        self.queue.top_up()
        stale = self.t - 1
        if stale in self.versions and self.versions[stale][1] == 0:
            del self.versions[stale]

        # --- evaluate w_{t+1} every eval.every iterations and at the end ---
        row: dict[str, Any] = {
            "iteration": t,
            "sys/wall_s": time.perf_counter() - self.started_at,
            "sys/virtual_time": self.queue.now,
            "agg/k": len(updates),
            "agg/lr": step.lr,
            "agg/versions_held": len(self.versions),
            "agg/remodels": float(len(decision.resend)),
            "agg/kept_previous": float(decision.keep_previous),
            "sys/wasted_jobs": self.wasted_jobs,
            "sys/worker_failures": self.pool.failures,
            "agg/rejected": float(sum(rejected.values())),
            **step.metrics,
            **decision.metrics,
        }
        row["sys/iteration_s"] = time.perf_counter() - tick
        row["sys/server_s"] = row["sys/iteration_s"] - wait_s
        if self.t % self.cfg.eval.every == 0 or self.t == self.cfg.iterations:
            row["eval/accuracy"], row["eval/loss"] = self.evaluate()
        weights = np.asarray(step.weights, dtype=np.float64)
        update_rows = [
            {
                "iteration": t,
                "client_id": u.client_id,
                "version": u.version,
                "staleness": t - u.version,
                "weight": float(weights[j]),
                "loss": u.loss,
                "worker": u.worker,
            }
            for j, u in enumerate(updates)
        ]
        return row, update_rows

    # --- evaluation and state -----------------------------------------------------------------

    def _accuracy(self, w: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
        set_flat(self.model, w)
        return evaluate(self.model, x, y, self.normalize, self.cfg.eval.batch_size)[0]

    def evaluate(self) -> tuple[float, float]:
        """(accuracy, loss) of the current global model on the evaluation set."""
        set_flat(self.model, self.w)
        return evaluate(
            self.model, self.x_eval, self.y_eval, self.normalize, self.cfg.eval.batch_size
        )

    def weights(self) -> np.ndarray:
        """The current global model as a flat (P,) float32 vector."""
        return self.w

    def state_dict(self) -> dict[str, Any]:
        """The current global model as a torch state_dict (CPU tensors)."""
        set_flat(self.model, self.w)
        return {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}

    def describe(self) -> dict[str, Any]:
        """The pool and model sizes, for the driver's log and summary."""
        return {
            "workers": self.pool.info,
            "num_parameters": int(self.w.size),
            "iteration": self.t,
            "updates_aggregated": self.updates_aggregated,
            "maintained": self.maintained,
            "remodels": self.remodels,
            "wasted_jobs": self.wasted_jobs,
            "worker_failures": self.pool.failures,
            "rejected_updates": dict(self.rejected),
            "jobs_dispatched": self.jobs_dispatched,
            # Every job started is aggregated, rejected, dropped by remodel, or still live.
            "jobs_lost": self.jobs_dispatched
            - self.updates_aggregated
            - sum(self.rejected.values())
            - self.remodels
            - len(self.queue.current),
            "versions_held": len(self.versions),
            "device": str(self.device),
        }
