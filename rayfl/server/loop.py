"""The K-asynchronous server loop (AKAFL-RJ spec sections 1-3; Algorithm 1).

Every client is always busy computing one update on the version it last received. Each iteration
the server takes the first K_t updates to arrive (virtual or real clock), runs the aggregation
rule chain (K-async SGD, WKAFL, ...), makes w_{t+1} = w_t - eta_t * g_t, and sends w_{t+1} to
exactly those K_t clients. Control rules (adaptive K, remodel, judgement) act on the loop itself.

``KAsyncServer`` is a plain class; the driver runs it as a Ray actor and calls ``run(n)`` in
chunks, so it can show progress and write results while the server works. Its parts, each in its
own module: the job queue of the clock (:mod:`rayfl.server.clock`), job scheduling on the worker
pool (:mod:`rayfl.server.scheduler`), the versions in the object store
(:mod:`rayfl.server.versions`), the aggregation step (:mod:`rayfl.server.aggregate`),
evaluation (:mod:`rayfl.evaluation`) and the clients' states (:mod:`rayfl.clients.state`).
"""

from __future__ import annotations

import heapq
import time
from typing import Any

import numpy as np
import ray
import torch

from rayfl import threads
from rayfl.aggregation import build_optimizer, build_rule_list, chain, init_rule_state
from rayfl.aggregation.backend import Placement, to_host_tree
from rayfl.aggregation.backend import choose as choose_backend
from rayfl.aggregation.build import checkpointable
from rayfl.aggregation.control import Decision, Feedback, build_controls, decide
from rayfl.clients.state import ClientStates
from rayfl.clients.task import DataSpec
from rayfl.config import ExperimentConfig
from rayfl.errors import RayflError
from rayfl.evaluation import Evaluator
from rayfl.heap import HeapTrimmer
from rayfl.models import build_model, get_flat, set_flat
from rayfl.server.aggregate import Aggregate, aggregate, check_finite, check_update, update_rows
from rayfl.server.clock import RealQueue, VirtualQueue
from rayfl.server.compactqueue import LiveArrays
from rayfl.server.sampling import IdleClientSampler
from rayfl.server.scheduler import JobScheduler
from rayfl.server.versions import VersionStore
from rayfl.speed import SpeedModel
from rayfl.types import Job, SharedData, Update

CHECKPOINT_FORMAT = 4  # bump when the checkpoint's layout changes (4: no pickle)


class KAsyncServer:
    """The server: global model, versions, the job queue, the rule chain, evaluation."""

    def __init__(self, cfg: ExperimentConfig):
        # Light on purpose: the driver creates the actor as soon as Ray is up, so that its
        # process starts and imports while the data go into the object store (start() gets them).
        self.cfg = cfg
        self._trim_heap = HeapTrimmer()  # rayfl.heap: the server lives for the whole run
        self._pinned: list[dict[int, Any]] = []  # the last checkpoints' version refs (checkpoint)

    # --- start --------------------------------------------------------------------------------

    def start(
        self, data: SharedData, restore: dict[str, Any] | None = None, workers: Any = None
    ) -> dict[str, Any]:
        """Builds w_0, attaches the pool (the driver's ``workers``, or a new one) and dispatches
        every client on w_0; or, with ``restore`` (a ``checkpoint()``), continues from there.

        Separate from ``__init__`` so that a user error (a model factory that fails to import, a
        pool that does not fit) reaches the driver as a ``RayflError``, not as a dead actor.
        """
        self.data = data
        cfg = self.cfg
        self._build_model()
        self._build_chain()
        self.controls = build_controls(cfg.aggregation.control)
        self.control_state = [c.init(self.k) for _, c in self.controls]
        self._by_version: list[tuple[int, int, float]] = []  # (version, client, finish) heap
        self.maintained = 0  # candidates rejected by judgement
        self.remodels = 0  # clients resent by remodel
        self.rejected: dict[str, int] = {}  # broken updates rejected, by reason
        self.jobs_dispatched = 0  # every job ever started (restored jobs count once)
        x_test, y_test = ray.get([self.data.x_test, self.data.y_test])
        spec = DataSpec.of(x_test, self.data.num_classes, self.data.mean, self.data.std)
        self.evaluator = Evaluator(cfg, self.model, x_test, y_test, spec, self.device)
        # Per-client state (rayfl.clients.state): sent with each job, kept when its update is
        # accepted; empty for a task without state.
        self.client_states = ClientStates()
        self.scheduler = JobScheduler(cfg, self.data, self.client_states, workers)
        self.versions = VersionStore()
        if restore is None:
            self.versions.put(0, self.w, self._broadcast())
        else:
            self._restore_state(restore)
        self.queue = self._make_queue()
        self.started_at = time.perf_counter()
        self.updates_aggregated = 0
        concurrency = cfg.clock.concurrency
        self.sampler = (
            None
            if concurrency is None
            else IdleClientSampler(cfg.data.num_clients, concurrency, cfg.seed)
        )
        if restore is None:
            # every client starts on w_0, or C of them with bounded concurrency
            starting = (
                np.arange(cfg.data.num_clients)
                if self.sampler is None
                else np.array(self.sampler.initial(), dtype=np.int64)
            )
            self._dispatch_many(starting, 0)
        else:
            self.updates_aggregated = restore["updates_aggregated"]
            self.started_at -= restore["wall_s"]
            self._redispatch(LiveArrays.from_state(restore["jobs"]))
        self.queue.top_up()
        return self.describe()

    def _build_model(self) -> None:
        """w_0 (seeded), on the GPU Ray gave the server if any."""
        cfg = self.cfg
        threads.limit(cfg.server.num_cpus)
        use_gpu = bool(ray.get_gpu_ids()) and torch.cuda.is_available()
        self.device = torch.device("cuda" if use_gpu else "cpu")
        self.model = build_model(
            cfg.model, self.data.input_shape, self.data.num_classes, cfg.seed
        ).to(self.device)
        self.w = get_flat(self.model)  # (P,) float32
        self.t = 0
        self.k = cfg.aggregation.k

    def _build_chain(self) -> None:
        """The rule chain and the server optimizer, their states, and the backend they run on
        (aggregation.backend: numpy, or torch on the server's GPU)."""
        cfg = self.cfg
        rules = build_rule_list(cfg.aggregation.rules)  # imports user rules in this process
        self.rule = chain(*(r for _, r in rules))
        self.optimizer = build_optimizer(cfg.aggregation.optimizer)
        kind = choose_backend(
            cfg.aggregation.backend,
            rules,
            ("aggregation.optimizer", self.optimizer),
            self.device.type == "cuda",
        )
        self.placement = Placement(kind, self.device)
        self.w_native = self.placement.native(self.w)  # w_t in the chain's backend
        self.rule_state = init_rule_state(rules, self.w_native)
        self.optimizer_state = checkpointable(
            "aggregation.optimizer", self.optimizer.init(self.w_native)
        )

    def _make_queue(self) -> VirtualQueue | RealQueue:
        """The clock's job queue, with the speed model of the clients."""
        cfg, scheduler = self.cfg, self.scheduler
        speed = SpeedModel(
            cfg.clock,
            cfg.data.num_clients,
            work=cfg.client.batch_size * cfg.client.local_steps,
            model_bytes=self.w.nbytes,
            seed=cfg.seed,
        )
        if cfg.clock.kind == "real":
            return RealQueue(
                speed,
                lambda job, delay: scheduler.submit_one(
                    job,
                    self.versions.ref(job.version),
                    delay,
                    self.versions.broadcast_ref(job.version),
                ),
                cfg.clock.time_scale,
                discard=scheduler.discard,
            )
        lookahead = cfg.clock.lookahead or max(2 * cfg.aggregation.k, 4 * len(scheduler.workers))
        return VirtualQueue(
            speed,
            lambda jobs: scheduler.submit_batch(
                jobs, self._compute_version, self.versions.ref, self.versions.broadcast_ref
            ),
            lookahead,
            discard=scheduler.discard,
            eager=cfg.aggregation.staleness == "true",
        )

    # --- checkpoints --------------------------------------------------------------------------

    def checkpoint(self) -> dict[str, Any]:
        """The server's full state after iteration t - 1: enough to continue bit-identically.

        Holds the global model, every version a live job still holds (as ObjectRefs, which
        ``write_checkpoint`` resolves), the rule and control states (momentum, adaptive K,
        judgement's EWMA, momentum's g_{t-1}), the server optimizer's state, the clients' states
        (a live job was submitted, or will be, with its client's stored state), the counters,
        and the live jobs (three flat arrays). Every random draw in the engine is a pure
        function of (seed, stream, client, version), so no generator state needs saving.
        """
        jobs = self.queue.live_jobs()  # arrays: no object per client
        held = sorted(set(np.unique(jobs.version).tolist()) | {self.t})
        versions = self.versions.refs(held)
        # A ref that travels only inside this return value was seen freed once the next chunk
        # released its version, before the driver read it (Ray's ReferenceCountingAssertionError
        # in write_checkpoint): hold the refs of the last two checkpoints here (two server calls
        # are in flight), so the driver always reads live objects.
        self._pinned = [*self._pinned[-1:], versions]
        return {
            "format": CHECKPOINT_FORMAT,
            "t": self.t,
            "k": self.k,
            "w": self.w,
            "rule_state": to_host_tree(self.rule_state),  # numpy on either backend
            "optimizer_state": to_host_tree(self.optimizer_state),
            "control_state": self.control_state,
            "client_states": self.client_states.checkpoint(),
            "counters": {
                "maintained": self.maintained,
                "remodels": self.remodels,
                "wasted_jobs": self.scheduler.wasted_jobs,
                "rejected": dict(self.rejected),
                "worker_failures": self.scheduler.pool.failures,
                "jobs_dispatched": self.jobs_dispatched,
            },
            "updates_aggregated": self.updates_aggregated,
            "wall_s": time.perf_counter() - self.started_at,
            "now": self.queue.now,
            "jobs": jobs.state(),
            # ObjectRefs, not arrays: the caller gets the versions straight from the object store
            # (write_checkpoint), instead of one big object of a different size each time,
            # which fragments the store so that it keeps taking fresh pages.
            "versions": versions,
            "broadcasts": self.versions.broadcasts(held),  # Rule.broadcast of each, if any
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
        self.w_native = self.placement.native(self.w)
        place = self.placement.native_tree
        template = to_host_tree(self.rule_state)
        self.rule_state = place(_conform(state["rule_state"], template, "aggregation.rules"))
        self.control_state = _conform(
            state["control_state"], self.control_state, "aggregation.control"
        )
        self.optimizer_state = place(
            _conform(
                state["optimizer_state"],
                to_host_tree(self.optimizer_state),
                "aggregation.optimizer",
            )
        )
        task = self.evaluator.task
        self.client_states.restore(state["client_states"], lambda i: task.init_state(i, self.w))
        c = state["counters"]
        self.maintained, self.remodels = c["maintained"], c["remodels"]
        self.scheduler.wasted_jobs = c["wasted_jobs"]
        self.rejected, self.scheduler.pool.failures = dict(c["rejected"]), c["worker_failures"]
        self.jobs_dispatched = c["jobs_dispatched"]
        broadcasts = state.get("broadcasts", {})
        for v, w in state["versions"].items():
            self.versions.put(v, w, broadcasts.get(v))
        self._restored_now = state["now"]

    def _redispatch(self, jobs: LiveArrays) -> None:
        """Puts checkpointed live jobs back in flight (same finish times on the virtual clock)."""
        for version, count in zip(*np.unique(jobs.version, return_counts=True), strict=True):
            self.versions.acquire(int(version), int(count))
        finish = self.queue.restore_many(jobs, self._restored_now)
        self._by_version_add(jobs.client, jobs.version, finish)

    # --- jobs ---------------------------------------------------------------------------------

    def _dispatch_many(self, client_ids: np.ndarray, version: int) -> None:
        """Starts many jobs on ``version`` at once, vectorised (every client on w_0)."""
        self.jobs_dispatched += client_ids.size
        self.versions.acquire(version, int(client_ids.size))
        finish = self.queue.dispatch_many(client_ids, version)
        self._by_version_add(client_ids, version, finish)

    def _by_version_add(self, clients: np.ndarray, versions: Any, finish: np.ndarray) -> None:
        if not self.controls:
            return
        # remodel's index of (version, client, finish): a heap, built at once at the start
        entries = zip(
            np.broadcast_to(versions, clients.shape).tolist(),
            clients.tolist(),
            finish.tolist(),
            strict=True,
        )
        if 8 * clients.size < len(self._by_version):  # a few: O(K log N), not O(N)
            for entry in entries:
                heapq.heappush(self._by_version, entry)
        else:
            self._by_version.extend(entries)
            heapq.heapify(self._by_version)

    def _dispatch(self, client_id: int, version: int) -> None:
        self.jobs_dispatched += 1
        self.versions.acquire(version)
        job = self.queue.dispatch(client_id, version)
        if self.controls:
            heapq.heappush(self._by_version, (version, client_id, job.finish))

    def _compute_version(self, job: Job) -> int:
        """The version a job computes on: its own, or with ``staleness: nominal`` the newest
        (the public WKAFL code's behaviour: staleness only enters the weights and the lr)."""
        return job.version if self.cfg.aggregation.staleness == "true" else self.t

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

    # --- the loop -----------------------------------------------------------------------------

    # The driver calls this every CHUNK iterations: no task events to the GCS, which would keep
    # up to 100,000 of them (it grew ~25 MB per hour in the soak); failures still show.
    @ray.method(enable_task_events=False)
    def run(self, iterations: int) -> dict[str, list[dict[str, Any]]]:
        """Runs up to ``iterations`` more iterations; returns their metric and update rows."""
        rows: list[dict[str, Any]] = []
        updates: list[dict[str, Any]] = []
        end = min(self.cfg.iterations, self.t + iterations)
        grown = self.scheduler.maybe_grow()
        if grown and isinstance(self.queue, VirtualQueue) and self.cfg.clock.lookahead is None:
            # The default window scales with the pool: keep it at 4 jobs per worker, or the new
            # workers mostly idle. The window does not change any result.
            workers = len(self.scheduler.workers)
            self.queue.lookahead = max(self.queue.lookahead, 4 * workers)
        try:
            while self.t < end:
                row, ups = self.iterate()
                rows.append(row)
                updates.extend(ups)
        except RayflError as e:
            # A run-ending error (a diverged model, updates broken in a row): the iterations of
            # this chunk before it still reach the metrics; the driver raises it after them.
            return {"metrics": rows, "updates": updates, "error": e}
        self._trim_heap()
        return {"metrics": rows, "updates": updates}

    def iterate(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """One iteration t: wait for K_t updates, aggregate, make and send w_{t+1}, evaluate."""
        t = self.t
        tick, cpu_tick = time.perf_counter(), time.process_time()
        updates, rejected, wait_s = self._collect()  # --- the first K valid updates ---
        agg = aggregate(  # --- the rule chain makes g_t and eta_t, the optimizer w_{t+1} ---
            self.rule,
            self.rule_state,
            self.optimizer,
            self.optimizer_state,
            t,
            updates,
            self.w_native,
            self.cfg.aggregation.lr,
            self.placement,
            seed=self.cfg.seed,
            num_clients=self.cfg.data.num_clients,
            local_models=self._local_models(updates),
        )
        check_finite(t, agg.candidate, self.cfg)
        self.updates_aggregated += len(updates)
        decision = self._control(t, len(updates), agg)  # --- judgement, remodel, adaptive K ---
        self._apply(agg, decision.keep_previous)
        self.t = t + 1
        self._send_new_version(updates, decision)  # --- w_{t+1} to the K clients, remodelled ---
        row = self._row(t, len(updates), agg, decision, rejected)
        row["sys/iteration_s"] = time.perf_counter() - tick
        row["sys/server_s"] = row["sys/iteration_s"] - wait_s
        # CPU seconds of the server's process (all its threads, Ray's included): its own cost,
        # apart from the time it waited for a core it shares with workers on a small machine.
        row["sys/server_cpu_s"] = time.process_time() - cpu_tick
        if self.t % self.cfg.eval.every == 0 or self.t == self.cfg.iterations:
            row["eval/accuracy"], row["eval/loss"] = self.evaluate()
        return row, update_rows(t, updates, agg.step.weights)

    def _apply(self, agg: Aggregate, keep_previous: bool) -> None:
        """Takes the candidate as w_{t+1} and commits the rules' and optimizer's states; or,
        when judgement keeps the previous model, keeps w_t and the optimizer's state."""
        self.rule_state = agg.rule_state
        if keep_previous:
            self.maintained += 1  # judgement: w_{t+1} = w_t
            return
        self.w, self.w_native = agg.candidate, agg.candidate_native
        self.rule_state = self.rule.commit(agg.step, agg.rule_state, self.w_native)
        self.optimizer_state = agg.optimizer_state

    def _collect(self) -> tuple[list[Update], dict[str, int], float]:
        """Waits for the first K_t valid updates; (updates, rejected by reason, seconds waited).

        A broken update never reaches the model: it is counted and its client gets w_t again.
        """
        t = self.t
        updates: list[Update] = []
        rejected: dict[str, int] = {}
        wait_s = 0.0
        self._bases: dict[int, Any] = {}
        while len(updates) < self.k:
            taken = self.queue.take(self.k - len(updates))
            if not taken:
                raise RayflError("no client job is in flight: this is a bug, please report it")
            self.queue.top_up()  # keep every worker busy while we wait and aggregate
            waited = time.perf_counter()
            arrived = self.scheduler.resolve([handle for _, handle in taken])
            wait_s += time.perf_counter() - waited
            for job, _ in taken:
                # the model each update started from, for rules that mix local models (FedAsync)
                self._bases[job.version] = self.versions.ref(job.version)
                self.versions.release(job.version, self.t)
            for u in arrived:
                reason = check_update(u, self.w.shape, self.cfg.aggregation.max_update_norm)
                if reason is None:
                    updates.append(u)
                    # accepted: keep its client's new state (a rejected update leaves the old)
                    self.client_states.accept(u.client_id, u.state)
                    continue
                rejected[reason] = rejected.get(reason, 0) + 1
                self._dispatch(u.client_id, t)
            if sum(rejected.values()) > self.cfg.data.num_clients + self.k:
                raise RayflError(
                    f"iteration {t}: {sum(rejected.values())} updates rejected in a row "
                    f"({', '.join(sorted(rejected))}): the clients' updates are broken or the "
                    "model diverged; check the model, the learning rates (aggregation.lr, "
                    "client.local_lr) and aggregation.max_update_norm"
                )
        for reason, n in rejected.items():
            self.rejected[reason] = self.rejected.get(reason, 0) + n
        return updates, rejected, wait_s

    def _control(self, t: int, k: int, agg: Aggregate) -> Decision:
        """The control rules' merged decision on the candidate w_{t+1} (AKAFL-RJ sections 4-6)."""
        if not self.controls:
            return Decision()
        cache: list[float] = []

        def evaluate_candidate() -> float:  # judgement's validation accuracy, computed once
            if not cache:
                cache.append(self.evaluator.validation_accuracy(agg.candidate))
            return cache[0]

        feedback = Feedback(
            iteration=t,
            iterations=self.cfg.iterations,
            k=k,
            loss=agg.step.metrics["train/loss"],
            clients_older_than=self._clients_older_than,
            evaluate=evaluate_candidate,
        )
        decision, self.control_state = decide(self.controls, self.control_state, feedback)
        return decision

    def _send_new_version(self, updates: list[Update], decision: Decision) -> None:
        """Puts w_{t+1} in the object store and starts the reporting and remodelled clients on
        it; applies the new K; frees w_t if no job is on it."""
        self.versions.put(self.t, self.w, self._broadcast())
        if self.sampler is None:
            starting = [u.client_id for u in updates]  # every client always trains
        else:  # bounded concurrency: as many idle clients as updates were taken start
            starting = self.sampler.next(self.t, len(updates), self.queue.current)
        self._dispatch_many(np.array(starting, dtype=np.int64), self.t)  # K durations at once
        for client_id in decision.resend:
            old = self.queue.drop(client_id)
            if old is not None:
                self.versions.release(old.version, self.t)
                self.remodels += 1
            self._dispatch(client_id, self.t)
        if decision.k is not None:
            self.k = min(max(1, decision.k), self.cfg.data.num_clients)
        self.queue.top_up()
        self.versions.free_if_unused(self.t - 1)

    def _row(
        self, t: int, k: int, agg: Aggregate, decision: Decision, rejected: dict[str, int]
    ) -> dict[str, Any]:
        """metrics.parquet's row of iteration t (without timings and evaluation)."""
        return {
            "iteration": t,
            "sys/wall_s": time.perf_counter() - self.started_at,
            "sys/virtual_time": self.queue.now,
            "agg/k": k,
            "agg/lr": agg.step.lr,
            "agg/versions_held": len(self.versions),
            "agg/remodels": float(len(decision.resend)),
            "agg/kept_previous": float(decision.keep_previous),
            "sys/wasted_jobs": self.scheduler.wasted_jobs,
            "sys/worker_failures": self.scheduler.pool.failures,
            "agg/rejected": float(sum(rejected.values())),
            **agg.step.metrics,
            **decision.metrics,
        }

    def _broadcast(self) -> dict[str, Any] | None:
        """What the rules send to the clients with the current model (Rule.broadcast)."""
        if self.rule.broadcast is None:
            return None
        return to_host_tree(self.rule.broadcast(self.rule_state))  # the object store holds numpy

    def _local_models(self, updates: list[Update]) -> Any:
        """Step.local_models: w_{v_i} - client.local_lr * u_i, each update's local model, made
        only if a rule or the optimizer asks (FedAsync). With ``staleness: nominal`` v_i is the
        job's nominal version."""
        bases, lr = dict(self._bases), np.float32(self.cfg.client.local_lr)

        def make() -> np.ndarray:
            start = ray.get([bases[u.version] for u in updates])
            return np.stack([w - lr * u.vector for w, u in zip(start, updates, strict=True)])

        return make

    # --- evaluation and state -----------------------------------------------------------------

    def evaluate(self) -> tuple[float, float]:
        """(accuracy, loss) of the current global model on the evaluation set."""
        return self.evaluator.evaluate(self.w)

    def weights(self) -> np.ndarray:
        """The current global model as a flat (P,) float32 vector."""
        return self.w

    def state_dict(self) -> dict[str, Any]:
        """The current global model as a torch state_dict (CPU tensors)."""
        set_flat(self.model, self.w)
        return {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}

    def describe(self) -> dict[str, Any]:
        """The pool and model sizes and the counters, for the driver's log and summary."""
        return {
            "workers": self.scheduler.pool.info,
            "num_parameters": int(self.w.size),
            "iteration": self.t,
            "updates_aggregated": self.updates_aggregated,
            "maintained": self.maintained,
            "remodels": self.remodels,
            "wasted_jobs": self.scheduler.wasted_jobs,
            "worker_failures": self.scheduler.pool.failures,
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
            "aggregation_backend": repr(self.placement),
        }


def _conform(state: Any, template: Any, field: str) -> Any:
    """A state read from a checkpoint, with the classes of the running code's ``template``."""
    from rayfl.runtime.safestate import UnsafeState, conform

    try:
        return conform(state, template, field)
    except UnsafeState as e:
        raise RayflError(str(e)) from None
