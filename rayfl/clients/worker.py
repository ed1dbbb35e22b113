"""Client workers: Ray actors that each serve many virtual clients.

A worker maps the shared training images and the partition from the Ray object store (zero copy:
one copy per node, whatever the number of workers or clients) and computes jobs
``(client_id, version)`` on request. It is an async actor: an injected real-clock delay is an
``asyncio.sleep`` that does not block computation, so many clients can be "in flight" on one
worker while its single compute thread works on others. Compute runs on the GPU when Ray assigned
this worker one (``num_gpus``, fractions allowed) and CUDA is usable, else on one CPU thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import os
from typing import Any

import numpy as np
import ray
import torch

from rayfl import threads
from rayfl.clients.batched import BatchedJobs, JobArgs, batched_jobs
from rayfl.clients.gpu import cap_memory, out_of_memory_as_error
from rayfl.clients.local import LocalTrainer, Result
from rayfl.clients.rounds import RoundClients, RoundUpdate
from rayfl.clients.shipped import build_task
from rayfl.clients.task import DataSpec
from rayfl.config import ExperimentConfig
from rayfl.errors import ConfigError
from rayfl.heap import HeapTrimmer
from rayfl.models import build_model
from rayfl.types import Job, SharedData, Update


class NotAttachedError(RuntimeError):
    """A call reached a worker that has not mapped the data (Ray restarted it): attach it."""


class ClientWorker:
    """Computes client updates; wrap with ``ray.remote`` (see ``make_pool``)."""

    def __init__(self, index: int, cfg: ExperimentConfig):
        # The constructor takes no ObjectRefs: Ray can restart a dead worker from these small
        # arguments alone, and the server then calls ``attach`` again.
        self.index = index
        self.cfg = cfg
        gpu_ids = ray.get_gpu_ids()
        if gpu_ids and torch.cuda.is_available():
            self.device = torch.device("cuda")
            cap_memory(self.device, cfg.client.num_gpus)  # its share, not the whole GPU
        else:
            self.device = torch.device("cpu")
            threads.limit(cfg.client.num_cpus)
        self.trainer: LocalTrainer | None = None
        self.batched: BatchedJobs | None = None  # client.batched, where it applies
        self.compute_path = "one job at a time"  # which path and why, in info()
        # One compute thread: jobs run one at a time, in the order they were submitted.
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        self._trim_heap = HeapTrimmer()  # a worker lives for the whole run (rayfl.heap)
        self._faulty = frozenset(cfg.client.faults.get("client_ids", ()))
        self._fault_kind = cfg.client.faults.get("kind")
        # Synchronous rounds (rayfl.rounds): the client side, whose private numbers stay here.
        self._rounds: RoundClients | None = None

    async def attach(self, data: SharedData) -> dict[str, Any]:
        """Maps the shared data and builds the model and the client task; returns ``info()``.

        A numpy array from the object store is a read-only view of the node's shared memory: no
        copy per worker or per client.
        """
        x, y, indices, offsets = await asyncio.gather(
            data.x_train, data.y_train, data.indices, data.offsets
        )
        cfg = self.cfg
        model = build_model(cfg.model, data.input_shape, data.num_classes, cfg.seed)
        spec = DataSpec.of(x, data.num_classes, data.mean, data.std)
        self.trainer = LocalTrainer(
            build_task(cfg.client.task, cfg.client.task_params, spec),
            cfg.client.task,
            model,
            x,
            y,
            indices,
            offsets,
            batch_size=cfg.client.batch_size,
            local_steps=cfg.client.local_steps,
            local_lr=cfg.client.local_lr,
            seed=cfg.seed,
            device=self.device,
        )
        if cfg.mode == "sync":
            self._rounds = RoundClients(self.trainer, cfg)
            self.compute_path = "one job at a time: synchronous rounds"
        else:
            with out_of_memory_as_error(self.device, cfg.client, 2):  # its check runs 2 jobs
                self.batched, self.compute_path = batched_jobs(
                    self.trainer, cfg.client.batched, cfg.client.max_batch_jobs
                )
        return self.info()

    def _updates(self, jobs: list[tuple[Job, JobArgs]]) -> list[Update]:
        """The Updates of ``jobs``, each with the arguments it computes from: all at once where
        ``client.batched`` applies, else one at a time."""
        trainer = self.trainer
        if trainer is None:
            # Ray restarted this worker and delivered a call queued while it was down before the
            # server's attach(): the server re-runs the batch elsewhere and attaches it again.
            raise NotAttachedError(f"client worker {self.index} holds no data: attach() first")
        batched = self.batched if len(jobs) > 1 else None
        with out_of_memory_as_error(self.device, self.cfg.client, len(jobs) if batched else 1):
            if batched is not None:
                results = batched.compute([args for _, args in jobs])
            else:
                results = [trainer.update(*args) for _, args in jobs]
        self._trim_heap()
        return [self._made(job, result) for (job, _), result in zip(jobs, results, strict=True)]

    @staticmethod
    def _args(job: Job, weights: Any, states: dict[int, bytes], server: Any) -> JobArgs:
        return JobArgs(job.client_id, job.version, weights, states.get(job.client_id), server)

    def _made(self, job: Job, result: Result) -> Update:
        vector, loss, state, report = result
        if job.client_id in self._faulty:
            vector = corrupt(vector, self._fault_kind)
        return Update(job.client_id, job.version, vector, loss, self.index, state, report)

    def info(self) -> dict[str, Any]:
        """Where this worker runs: node id, pid, device, assigned GPU ids, and what its float
        results depend on (:func:`rayfl.environment.fingerprint`: versions, CPU, threads; and
        whether it computes jobs batched, ``client.batched``)."""
        from rayfl.environment import fingerprint

        ctx = ray.get_runtime_context()
        return {
            "index": self.index,
            "node_id": ctx.get_node_id(),
            "pid": os.getpid(),
            "device": str(self.device),
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
            # the compute path changes the last bits too (rayfl.clients.batched)
            "environment": {**fingerprint(), "client_compute": self.compute_path},
        }

    # The calls made for every job (and, below, every round) send no task events to the GCS: a
    # long run makes millions of them and the GCS keeps up to 100,000 (memory that grows for the
    # first hours of a run); the dashboard still lists the actors, their failures and attach().
    @ray.method(enable_task_events=False)
    async def compute(
        self,
        job: Job,
        weights: np.ndarray,
        delay_s: float = 0.0,
        state: bytes | None = None,
        server: dict[str, np.ndarray] | None = None,
    ) -> Update:
        """The update of ``job``; ``weights`` is the flat w_v (Ray resolves the ObjectRef),
        ``state`` the client's packed state if it has one (:mod:`rayfl.clients.state`),
        ``server`` the rules' broadcast with w_v if they make one (``Rule.broadcast``)."""
        if delay_s > 0:
            await asyncio.sleep(delay_s)  # injected straggler delay: others compute meanwhile
        args = JobArgs(job.client_id, job.version, weights, state, server)
        loop = asyncio.get_running_loop()
        updates = await loop.run_in_executor(self._executor, self._updates, [(job, args)])
        return updates[0]

    @ray.method(enable_task_events=False)
    async def compute_batch(
        self,
        jobs: list[tuple[Job, int]],
        *weights: Any,
        states: dict[int, bytes] | None = None,
        servers: int = 0,
    ) -> list[Update]:
        """Updates for several jobs; job j uses ``weights[index_j]`` (Ray resolves the refs)
        and its client's packed state in ``states`` (only clients that have one). With
        ``servers`` > 0 the last ``servers`` arguments are the rules' broadcasts, one per weights
        slot (``Rule.broadcast``: refs too, so they are passed beside the weights).

        One actor call for a batch amortises Ray's per-call overhead (virtual clock: the server
        knows the order of the next jobs, so it sends them in batches).
        """
        loop = asyncio.get_running_loop()
        states = states or {}

        models = weights[: len(weights) - servers]
        broadcasts = weights[len(models) :] if servers else [None] * len(models)

        work = [(job, self._args(job, models[i], states, broadcasts[i])) for job, i in jobs]
        return await loop.run_in_executor(self._executor, self._updates, work)

    # --- synchronous rounds: what leaves a worker is only what these methods return ---

    async def _in_thread(self, method: str, *args: Any) -> Any:
        """Runs ``RoundClients.<method>(*args)`` in the compute thread."""
        if self.trainer is None:
            # Ray restarted this worker (it died while idle) and nobody has attached it yet.
            raise NotAttachedError(f"client worker {self.index} holds no data: attach() first")
        if self._rounds is None:
            raise RuntimeError("round methods need a config with mode: sync")
        fn = getattr(self._rounds, method)
        out = await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        self._trim_heap()
        return out

    @ray.method(enable_task_events=False)
    async def train_round(
        self,
        client_ids: list[int],
        t: int,
        weights: np.ndarray,
        states: dict[int, bytes] | None = None,
        server: dict[str, np.ndarray] | None = None,
    ) -> list[RoundUpdate]:
        """Trains each client E local epochs from w(t) (and its packed state in ``states``, if
        it has one, and the rules' ``server`` broadcast); its new weights, loss, |D_i|, new
        state and report."""
        return await self._in_thread("train", client_ids, t, weights, states, server)

    @ray.method(enable_task_events=False)
    async def query(
        self, name: str, items: list[Any], payload: Any, t: int, weights: np.ndarray
    ) -> list[list[Any]]:
        """The selector's query ``name`` for the clients of ``items`` (ids or messages with a
        ``client_id``): its handler's replies, one list per client; the server checks their
        types (:meth:`RoundClients.query`). The one remote method every selector asks through."""
        return await self._in_thread("query", name, items, payload, t, weights)

    @ray.method(enable_task_events=False)
    async def round_utilities(
        self, client_ids: list[int], payments: list[float], t: int, weights: np.ndarray
    ) -> list[float]:
        """The simulator's records only (never the selection): realised u_i of paid clients."""
        return await self._in_thread("utilities", client_ids, payments, t, weights)


def corrupt(vector: np.ndarray, kind: str) -> np.ndarray:
    """A broken copy of ``vector`` (``client.faults``): what a faulty or malicious client sends."""
    if kind == "nan":
        out = vector.copy()
        out[0] = np.nan
        return out
    if kind == "inf":
        out = vector.copy()
        out[-1] = np.inf
        return out
    if kind == "huge":
        return vector * np.float32(1e12) + np.float32(1e6)
    if kind == "shape":
        return vector[:-1].copy()
    if kind == "dtype":
        return vector.astype(np.float64)
    raise ValueError(f"unknown fault kind {kind!r}")


def pool_size(cfg: ExperimentConfig, resources: dict[str, float]) -> int:
    """Workers that fit the cluster's ``resources`` at the configured per-worker CPUs/GPUs."""
    if cfg.client.num_workers is not None:
        return min(cfg.client.num_workers, cfg.data.num_clients)
    fits = []
    cpus = resources.get("CPU", 0.0) - cfg.server.num_cpus
    if cfg.client.num_cpus > 0:
        fits.append(math.floor(cpus / cfg.client.num_cpus + 1e-9))
    if cfg.client.num_gpus > 0:
        gpus = resources.get("GPU", 0.0) - cfg.server.num_gpus
        if gpus < cfg.client.num_gpus:
            raise ConfigError(
                f"client.num_gpus={cfg.client.num_gpus} but the cluster has {gpus:g} GPUs free: "
                "set client.num_gpus=0 or start Ray with GPUs"
            )
        fits.append(math.floor(gpus / cfg.client.num_gpus + 1e-9))
    n = min(fits)
    if n < 1:
        raise ConfigError(
            f"no client worker fits the cluster ({resources.get('CPU', 0):g} CPUs): lower "
            "client.num_cpus or server.num_cpus, or set client.num_workers"
        )
    return min(n, cfg.data.num_clients)


def make_pool(
    cfg: ExperimentConfig, max_concurrency: int, size: int | None = None, first_index: int = 0
) -> list[Any]:
    """Starts ``size`` worker actors (default: as many as fit the cluster), numbered from
    ``first_index``; call ``attach(data)`` on each before sending jobs."""
    n = pool_size(cfg, ray.cluster_resources()) if size is None else size
    actor_cls = ray.remote(ClientWorker)
    options: dict[str, Any] = {
        "num_cpus": cfg.client.num_cpus,
        "num_gpus": cfg.client.num_gpus,
        "max_concurrency": max_concurrency,
        # A dead worker is restarted by Ray; its failed calls raise at once (no retry) so that
        # the server re-dispatches their jobs to the live workers meanwhile.
        "max_restarts": cfg.client.max_restarts,
        "max_task_retries": 0,
    }
    if ray.util.get_current_placement_group() is None:
        # Spread workers over the nodes; inside a placement group (a Tune trial) they stay in
        # the group's bundles instead.
        options["scheduling_strategy"] = "SPREAD"
    return [
        actor_cls.options(**options).remote(i, cfg) for i in range(first_index, first_index + n)
    ]
